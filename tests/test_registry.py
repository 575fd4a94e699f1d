"""Registries: duplicate and unknown names, config validation, discovery of a user's plugin folder."""
import textwrap
from dataclasses import dataclass

import pytest

import framework
from framework import OPTIMIZERS, ConfigError, param
from framework.core.registry import ALL, Registry, RegistryError, load_plugins
from framework.monitoring import DIAGNOSTICS


def test_every_registry_lists_builtins():
    assert {"sgd", "adam"} <= set(framework.OPTIMIZERS.names())
    assert {"softmax", "svm", "mlp"} <= set(framework.MODELS.names())
    assert {"digits", "spiral", "npz", "cifar10", "mnist"} <= set(framework.DATASETS.names())
    assert "constant" in framework.SCHEDULES.names()
    assert {"none", "l2"} <= set(framework.REGULARIZERS.names())
    assert framework.OPTIMIZERS.names("ad*") == sorted(n for n in OPTIMIZERS.names() if n.startswith("ad"))


def test_duplicate_name_names_both_modules():
    reg = Registry("widget", "widget")

    @dataclass
    class Cfg:
        size: int = param(1, "size")

    def first(cfg):
        return cfg

    first.__module__ = "pkg_a.widgets"

    def second(cfg):
        return cfg

    second.__module__ = "pkg_b.widgets"
    reg.register("thing", config=Cfg)(first)
    with pytest.raises(RegistryError, match=r"pkg_a\.widgets.*pkg_b\.widgets"):
        reg.register("thing", config=Cfg)(second)


def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError) as info:
        OPTIMIZERS.build("adamm")
    text = str(info.value)
    assert "adamm" in text and "adam" in text and "sgd" in text


def test_build_validates_fields():
    with pytest.raises(ConfigError, match=r"optimizer\.lr.*-1"):
        OPTIMIZERS.build("adam", lr=-1)
    with pytest.raises(ConfigError, match=r"optimizer\.betta1"):
        OPTIMIZERS.build("adam", betta1=0.9)
    opt = OPTIMIZERS.build("adam", lr="1e-3")  # YAML reads 1e-3 without a dot as a string
    assert opt.cfg.lr == 1e-3


def test_names_are_lowercase_identifiers():
    reg = Registry("widget", "widget")
    with pytest.raises(RegistryError):
        reg.register("Bad-Name")


@pytest.mark.parametrize("registry", [*ALL, DIAGNOSTICS], ids=lambda r: r.kind)
def test_every_component_documents_its_options(registry):
    import dataclasses

    for name in registry.names():
        entry = registry.get(name)
        assert entry.description, f"{registry.kind} {name} has no docstring"
        for f in dataclasses.fields(entry.config_cls):
            assert f.metadata.get("help"), f"{registry.kind} {name}: field {f.name} lacks help text"


PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    from framework import OPTIMIZERS, Optimizer, OptimizerConfig, param

    @dataclass
    class SignConfig(OptimizerConfig):
        lr: float = param(1e-3, "step size", range="(0, inf)")

    @OPTIMIZERS.register("my_sign_sgd", config=SignConfig)
    class SignSGD(Optimizer):
        """Sign SGD: x -= lr * sign(dx) (a user plugin written for the tests)."""

        def apply(self, theta, grad, state, lr, momentum=None):
            import numpy as np
            theta -= lr * np.sign(grad)
            state.count[0] += 1
''')


def test_plugin_in_a_folder_is_discovered(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "sign_sgd.py").write_text(PLUGIN)
    load_plugins(extra_dirs=[folder])
    assert "my_sign_sgd" in OPTIMIZERS.names()
    import numpy as np

    opt = OPTIMIZERS.build("my_sign_sgd")
    theta, state = opt.update(np.array([1.0, 2.0]), np.array([3.0, -4.0]), opt.init(np.zeros(2)))
    np.testing.assert_allclose(theta, [1.0 - 1e-3, 2.0 + 1e-3])


def test_plugin_dropped_in_working_directory_runs_from_the_cli(tmp_path, cli):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "sign_sgd.py").write_text(PLUGIN)
    result = cli("optimizer=my_sign_sgd", "epochs=2", "preflight=off")
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(next(tmp_path.glob("outputs/runs/*/*/summary.json")).read_text())
    assert summary["optimizer"] == "my_sign_sgd" and summary["status"] == "ok"
    assert summary["metrics"]["val/acc"] > 0.5
