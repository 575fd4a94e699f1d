"""The registry of monitor diagnostics (framework.monitoring.plugin): every registered diagnostic writes only the
tags it declares and leaves the run untouched; the `diagnostics:` section is validated with full dotted keys; a
user's diagnostic dropped into a plugins/ folder is trained through the CLI, writes its tag with real values, and
its options (diagnostics.<name>.*, from its dataclass defaults, no YAML) are set and checked on the command line."""
from __future__ import annotations

import json
import math
import pathlib
import re
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea

import framework
from framework.core.errors import ConfigError
from framework.io.checkpoint import read_checkpoint
from framework.monitoring import DIAGNOSTICS, Moment
from framework.monitoring.diagnostics import Thresholds, configure
from framework.monitoring.monitor import Options
from framework.engine.callbacks import Callback
from conftest import assert_clean_failure, compose_config

PLUGIN_FILE = pathlib.Path(__file__).resolve().parent / "diagnostic_plugins" / "weight_max.py"
RUN_METRICS = {"train/loss_iter", "train/loss", "train/acc", "val/loss", "val/acc", "lr", "momentum", "val/ema_acc",
               "best_val_acc", "test_acc"}  # the Monitor's own tags, not a diagnostic's


def compose(*overrides):
    return compose_config("preflight=off", "checkpoint=null", *overrides)


def declared(tag: str, patterns) -> bool:
    """Whether `tag` is one of `patterns`, where <block> / <layer> stand for one name."""
    return any(re.fullmatch(re.sub(r"<\w+>", "[^/]+", re.escape(p)), tag) for p in patterns)


def test_declared_tags_match_names_only_in_their_place():
    assert declared("update_ratio/W1", ["update_ratio/<block>"]) and declared("first_layer", ["first_layer"])
    assert not declared("update_ratio/W1/x", ["update_ratio/<block>"]) and not declared("weights/W1", ["w/<b>"])


class Keep(Callback):
    def on_train_end(self, run):
        self.run = run


class Recorder:
    """Stands in for the EventWriter: records the tags of histograms and images."""

    def __init__(self):
        self.tags = []

    def histogram(self, tag, values, step, bins=30):
        assert np.all(np.isfinite(np.asarray(values)))
        self.tags.append(tag)

    def image(self, tag, pixels, step):
        assert pixels.ndim in (2, 3) and pixels.size
        self.tags.append(tag)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    keep = Keep()
    framework.train(compose("epochs=2", "tensorboard.enabled=false"), run_dir=tmp_path_factory.mktemp("run"),
                    callbacks=[keep])
    return keep.run


def test_the_builtins_are_registered():
    assert {"divergence", "update_ratio", "block_norms", "fit", "histograms", "units", "first_layer"} <= \
        set(DIAGNOSTICS.names())


@pytest.mark.parametrize("name", DIAGNOSTICS.names())
def test_a_diagnostic_writes_its_declared_tags_and_never_changes_the_run(trained_run, name):
    """Every hook of the diagnostic on a trained run: what it writes is declared in its `tags`, its scalars are
    finite numbers, and theta, gradient, EMA, history and every RNG stream are exactly as before."""
    run = trained_run
    entry = DIAGNOSTICS.get(name)
    diagnostic = entry.factory(configure({})[1][name])
    before = (run.theta.copy(), run.grad.copy(), run.ema.copy(), json.dumps(run.history),
              {k: json.dumps(g.bit_generator.state) for k, g in run.rngs.items()})
    recorder = Recorder()
    moment = Moment(run, recorder, Options(), run.data.X_val[:Options().sample_rows])
    diagnostic.on_monitor(run)
    scalars = diagnostic.measure(moment)
    diagnostic.end_epoch(run)
    findings = diagnostic.advise(moment, [])
    written = list(scalars) + recorder.tags
    assert all(declared(tag, diagnostic.tags) for tag in written), (written, diagnostic.tags)
    assert bool(written) == bool(diagnostic.tags)  # a digits MLP gets every built-in measurement
    assert all(isinstance(v, float) and math.isfinite(v) for v in scalars.values())
    assert all(f.as_dict()["check"] for f in findings)
    after = (run.theta, run.grad, run.ema, json.dumps(run.history),
             {k: json.dumps(g.bit_generator.state) for k, g in run.rngs.items()})
    for a, b in zip(before[:3], after[:3]):
        np.testing.assert_array_equal(a, b)
    assert before[3:] == after[3:]


def test_every_tag_a_run_writes_is_its_own_or_a_diagnostics(tmp_path):
    framework.train(compose("epochs=2", "tensorboard.histogram_every=1"), run_dir=tmp_path)
    acc = ea.EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = {t for kind in ("scalars", "histograms", "images") for t in acc.Tags()[kind]}
    patterns = [p for name in DIAGNOSTICS.names() for p in DIAGNOSTICS.get(name).factory.tags]
    assert {"update_ratio/W1", "grad_norm/b2", "weights/W2", "dead_relu/layer1", "first_layer"} <= tags
    assert [t for t in tags - RUN_METRICS if not declared(t, patterns)] == []


@pytest.mark.parametrize("node, key", [({"no_such_check": {"limit": 1}}, "diagnostics.no_such_check"),
                                       ({"units": {"saturation": 0.5}}, "diagnostics.units"),  # a built-in: flat
                                       ({"ratio_high": 1e-5}, "diagnostics.ratio_low")])
def test_the_section_is_validated_with_full_keys(node, key):
    with pytest.raises(ConfigError) as info:
        configure(node)
    assert info.value.key == key
    if key == "diagnostics.no_such_check":  # the message lists the flat options and the registered diagnostics
        assert "options of diagnostics: capacity_acc, capacity_gap, dead_fraction" in str(info.value)
        assert "plugin diagnostics: (none)" in str(info.value)


def test_the_builtins_read_the_flat_keys():
    thresholds, options = configure({"saturation": 0.9, "ratio_low": 1e-5})
    assert thresholds == Thresholds(saturation=0.9, ratio_low=1e-5)
    assert options["units"].saturation == 0.9 and options["update_ratio"].ratio_low == 1e-5
    assert options["fit"].overfit_gap == Thresholds().overfit_gap


# --- a user's diagnostic through the CLI -------------------------------------------------------------------------
def user_folder(tmp_path) -> pathlib.Path:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    shutil.copy(PLUGIN_FILE, tmp_path / "plugins" / PLUGIN_FILE.name)
    return tmp_path


def only_run(tmp_path) -> pathlib.Path:
    (run_dir,) = [p.parent for p in (tmp_path / "outputs" / "runs").glob("*/*/summary.json")]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("options, steps, advised", [((), [1, 2, 3], False),
                                                     (("diagnostics.weight_max.every=2",
                                                       "diagnostics.weight_max.limit=0.2"), [2, 3], True),
                                                     (("diagnostics.weight_max.enabled=false",), [], False)],
                         ids=["defaults", "every_2_limit", "disabled"])
def test_a_user_diagnostic_in_a_plugin_file_trains_through_the_cli(tmp_path, cli, options, steps, advised):
    """weight_max/<block> = max |weights of the block| at the epochs its `every` picks (and the last), the value
    at the last epoch equal to the weights of last.h5; its `limit` decides the advice."""
    user_folder(tmp_path)
    result = cli("epochs=3", "preflight=off", "checkpoint.every=0", *options)
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path)
    acc = ea.EventAccumulator(str(run_dir))
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("weight_max/")]
    if not steps:
        assert tags == []
        return
    assert sorted(tags) == ["weight_max/W1", "weight_max/W2", "weight_max/b1", "weight_max/b2"]
    state, info = read_checkpoint(run_dir / "checkpoints" / "last.h5")
    theta = state["theta"]
    for block in info["layout"]:
        events = acc.Scalars(f"weight_max/{block['name']}")
        assert [e.step for e in events] == steps
        size = math.prod(block["shape"])
        assert events[-1].value == pytest.approx(np.abs(theta[block["offset"]:block["offset"] + size]).max(),
                                                 rel=1e-6)
    assert 0.05 < acc.Scalars("weight_max/W1")[-1].value < 5  # He init on 64 inputs: a real, moderate weight
    checks = [f["check"] for f in json.loads((run_dir / "summary.json").read_text())["diagnostics"]]
    assert ("weight_max" in checks) is advised
    assert ("diagnostics: a weight reached" in result.stderr + result.stdout) is advised


@pytest.mark.parametrize("override, pieces", [
    ("diagnostics.weight_max.limit=-1", ["diagnostics.weight_max.limit", "-1", "(0, inf)"]),
    ("diagnostics.weight_max.limt=2", ["diagnostics.weight_max.limt", "Did you mean diagnostics.weight_max.limit"]),
    ("diagnostics.weight_max.every=0.5", ["diagnostics.weight_max.every", "an integer"]),
    ("diagnostics.weight_max=3", ["diagnostics.weight_max", "options of the diagnostic 'weight_max' (enabled, every, "
                                                           "limit)"]),
])
def test_a_user_diagnostics_bad_option_is_one_clean_paragraph(tmp_path, cli, override, pieces):
    user_folder(tmp_path)
    result = cli("epochs=1", "preflight=off", override)
    assert_clean_failure(result, pieces)
    assert result.returncode == 2
    assert not (tmp_path / "outputs" / "runs").exists() or not list((tmp_path / "outputs" / "runs").glob("*/*/*.h5"))


def test_framework_list_shows_a_user_diagnostic_and_its_options(tmp_path, cli):
    user_folder(tmp_path)
    result = cli("diagnostics", "--options", module="framework.list")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^  weight_max +Largest \|weight\| of each parameter block", result.stdout, re.M)
    assert "      limit = 10.0: largest |weight| above which the run gets advice (a value in (0, inf))" in \
        result.stdout.splitlines()
    assert re.search(r"^  units +Fractions of dead ReLUs", result.stdout, re.M)
