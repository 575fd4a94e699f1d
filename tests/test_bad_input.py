"""Bad input through the real CLI: one clear paragraph naming the key, the value and what is allowed, a non-zero
exit, no traceback, and no files left behind half-written."""
import importlib
import pickle

import numpy as np
import pytest

from conftest import assert_clean_failure, fake_cifar_folder

CASES = {
    "unknown optimizer": (["optimizer=adamm"], ["adamm", "adam", "sgd"]),
    "negative lr": (["lr=-1"], ["'lr'", "-1", "positive"]),
    "zero batch": (["batch_size=0"], ["'batch_size'", "0", ">= 1"]),
    "negative epochs": (["epochs=-1"], ["'epochs'", "-1", ">= 1"]),
    "hidden size 0": (["model.hidden_sizes=[100,0]"], ["model.hidden_sizes[1]", "0", "[1, inf)"]),
    "keep_prob above 1": (["model.keep_prob=1.5"], ["model.keep_prob", "1.5", "(0, 1]"]),
    "keep_prob zero": (["model.keep_prob=0"], ["model.keep_prob", "(0, 1]"]),
    "bad dtype": (["dtype=float16"], ["'dtype'", "float16", "float32"]),
    "bad activation": (["model.activation=sigmoid"], ["model.activation", "sigmoid", "relu"]),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_config_value(cli, name):
    args, expected = CASES[name]
    assert_clean_failure(cli(*args, "preflight=off"), expected)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def npz_cases(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    nan_X = X.copy()
    nan_X[7, 2] = np.nan
    return {
        "missing arrays": (write_npz(tmp_path / "a.npz", X_train=X), ["y_train", "lacks"]),
        "mismatched lengths": (write_npz(tmp_path / "b.npz", X_train=X, y_train=y[:30]), ["40", "30"]),
        "nan features": (write_npz(tmp_path / "c.npz", X_train=nan_X, y_train=y), ["NaN", "row 7"]),
        "labels out of range": (write_npz(tmp_path / "d.npz", X_train=X, y_train=y - 1, X_test=X, y_test=y),
                                ["labels", "-1"]),
        "not a file": (tmp_path / "nope.npz", ["nope.npz", "not a file"]),
    }


@pytest.mark.parametrize("name", ["missing arrays", "mismatched lengths", "nan features", "labels out of range",
                                  "not a file"])
def test_bad_npz(cli, tmp_path, name):
    path, expected = npz_cases(tmp_path)[name]
    assert_clean_failure(cli("data=npz", f"data.path={path}", "preflight=off"), expected)


def test_good_npz_trains(cli, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    y = (X[:, 0] > 0).astype(int)
    path = write_npz(tmp_path / "ok.npz", X_train=X, y_train=y)
    result = cli("data=npz", f"data.path={path}", "epochs=3", "preflight=off")
    assert result.returncode == 0, result.stderr


def test_cifar_directory_without_batches(cli, tmp_path):
    (tmp_path / "cifar").mkdir()
    result = cli("data=cifar10", f"data.path={tmp_path / 'cifar'}", "preflight=off")
    assert result.returncode != 0
    assert "data_batch_1" in result.stderr and "Traceback" not in result.stderr


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


def test_cifar_file_that_unpickles_anything_else_is_refused(cli, tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    result = cli("data=cifar10", f"data.path={folder}", "preflight=off")
    assert result.returncode != 0
    assert "refusing to unpickle" in result.stderr and "posix.system" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pwned.txt").exists()


def test_genuine_cifar_layout_loads(tmp_path):
    """A file in the real CIFAR-10 format (dict of bytes keys, uint8 array, list of labels) passes."""
    from framework import DATASETS

    rng = np.random.default_rng(0)
    folder = fake_cifar_folder(tmp_path / "cifar", rng, {b"batch_label": b"x"})
    raw = DATASETS.build("cifar10", path=str(folder)).load(rng)
    assert raw.X.shape == (100, 3072) and raw.image_shape == (3, 32, 32)  # (C, H, W)
    assert raw.splits["test"][0].shape == (20, 3072)


# --- saved configs are data, never code or interpolations (checkpoints, ensemble files) -------------------------
@pytest.mark.parametrize("text, piece", [
    ("!!python/object/apply:os.system ['echo pwned']\n", "not safe, valid YAML"),
    ("model: !!python/name:os.system\n", "not safe, valid YAML"),
    ("model: [unclosed\n", "not safe, valid YAML"),
    ("42\n", "should be a mapping"),
    ("- a\n- b\n", "should be a mapping"),
    ("data: {path: '${oc.env:HOME}'}\n", "'data.path'"),
    ("model: {hidden_sizes: ['${oc.env:HOME}']}\n", "'model.hidden_sizes[0]'"),
    ("model: {name: '???'}\n", "'model.name'"),
])
def test_saved_config_is_loaded_safely(text, piece):
    from framework.core.safe_config import SavedConfigError, load_saved_config

    with pytest.raises(SavedConfigError) as info:
        load_saved_config(text, "some/file.h5")
    assert "some/file.h5" in str(info.value) and piece in str(info.value)


def test_saved_config_keeps_plain_values():
    from framework.core.safe_config import load_saved_config

    cfg = load_saved_config("model: {name: mlp, hidden_sizes: [8, 4]}\nlr: 0.001\npath: a$b{c}\n", "f.h5")
    assert cfg.model.hidden_sizes == [8, 4] and cfg.lr == 0.001 and cfg.path == "a$b{c}"


# --- settings: sections first, full dotted keys, the allowed seed range ------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    (["monitor.every=-1"], "'monitor.every'"), (["early_stop.grace_steps=-1"], "'early_stop.grace_steps'"),
    (["early_stop.loss_multiple=-2"], "'early_stop.loss_multiple'"), (["++ema.warmup=3"], "'ema.warmup'"),
    (["checkpoint=abc"], "'checkpoint'"), (["ema=5"], "'ema'"), (["checkpoint.every=-1"], "'checkpoint.every'"),
    (["tensorboard.sample_rows=0"], "'tensorboard.sample_rows'"), (["diagnostics.overfit_gap=3"],
                                                                    "'diagnostics.overfit_gap'"),
    (["preflight.chance.rows=0"], "'preflight.chance.rows'"),
])
def test_every_section_is_checked_before_data_or_preflight(monkeypatch, overrides, key):
    """A bad value in any section stops the run before the data are loaded (so before the pre-flight)."""
    from conftest import compose_config
    run_module = importlib.import_module("framework.engine.run")
    from framework.core.errors import ConfigError
    from framework.engine.train import build_run

    def no_data(*args, **kw):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(run_module, "load_splits", no_data)
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as info:
        build_run(cfg, "unused")
    assert key in str(info.value)


def test_momentum_schedule_errors_name_their_own_section():
    from conftest import compose_config
    from framework.core.errors import ConfigError

    from framework.engine.run import Run

    cfg = compose_config("+momentum_schedule=ramp", "momentum_schedule.start=1.5", "model.hidden_sizes=[4]")
    with pytest.raises(ConfigError) as info:
        Run(cfg, "unused")
    assert "'momentum_schedule.start'" in str(info.value) and "'schedule.start'" not in str(info.value)


def test_seed_error_states_the_allowed_range():
    from framework.core.errors import ConfigError
    from framework.engine.settings import Settings

    from conftest import compose_config

    cfg = compose_config(f"seed={2 ** 64}")
    with pytest.raises(ConfigError) as info:
        Settings.from_cfg(cfg)
    assert "0 <= seed < 2**63" in str(info.value)
    assert Settings.from_cfg(compose_config(f"seed={2 ** 63 - 1}")).seed == 2 ** 63 - 1


# --- unknown keys are refused with close matches ----------------------------------------------------------------
@pytest.mark.parametrize("argv, pieces", [
    (["+epoch=5"], ["'epoch'", "Did you mean epochs"]), (["foo=1"], ["'foo'"]), (["+foo=1"], ["'foo'"]),
    (["monitor.evry=5"], ["'monitor.evry'", "monitor.every"]), (["model=svm", "model.hidden_sizes=[3]"],
                                                                ["'model.hidden_sizes'"]),
    (["data=npz", "data.paht=x"], ["'data.paht'", "data.path"]),
])
def test_unknown_keys_are_refused(argv, pieces):
    from framework.cli.app import check_unknown_keys
    from framework.core.errors import FrameworkError

    with pytest.raises(FrameworkError) as info:
        check_unknown_keys(argv)
    for piece in pieces:
        assert piece in str(info.value)


@pytest.mark.parametrize("argv", [
    ["epochs=5", "+momentum_schedule=ramp", "++tensorboard.enabled=false", "checkpoint=null"],
    ["+experiment=ensemble_seeds"], ["-m", "+search=coarse_to_fine", "hydra.sweeper.params.lr=1"],
    ["preflight=off", "+preflight.strict=false"], ["data=npz", "data.path=x.npz", "data.num_classes=3"],
    ["model.hidden_sizes=[10]", "optimizer=sgd", "optimizer.lr=0.1", "~ema"],
])
def test_known_keys_pass(argv):
    from framework.cli.app import check_unknown_keys

    check_unknown_keys(argv)


# --- data: relative threshold of standardize, fractions named together -----------------------------------------
@pytest.mark.parametrize("scale", [1e-15, 1.0, 1e3])
def test_standardize_works_at_any_scale(scale):
    from framework.components.data import DataConfig, RawData, prepare

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3)) * scale
    X[:, 2] = 5.0 * scale  # a constant feature keeps scale 1
    raw = RawData(X, rng.integers(0, 2, 200), 2, source="t")
    splits = prepare(raw, DataConfig(standardize=True, val_fraction=0.1, test_fraction=0.1), rng)
    assert np.allclose(splits.X_train[:, :2].std(axis=0), 1.0)
    assert splits.scale[2] == 1.0 and np.allclose(splits.X_train[:, 2], 0.0)


def test_fractions_summing_to_one_name_both_keys():
    from framework.components.data import DataConfig, RawData, prepare
    from framework.core.errors import ConfigError

    rng = np.random.default_rng(0)
    raw = RawData(rng.standard_normal((50, 2)), rng.integers(0, 2, 50), 2, source="t")
    with pytest.raises(ConfigError) as info:
        prepare(raw, DataConfig(val_fraction=0.6, test_fraction=0.5), rng)
    assert "data.val_fraction=0.6" in str(info.value) and "data.test_fraction=0.5" in str(info.value)
    # with a predefined test split only val_fraction cuts the data: 0.6 is fine there
    raw.splits = {"test": (raw.X[:5], raw.y[:5])}
    assert len(prepare(raw, DataConfig(val_fraction=0.6, test_fraction=0.5), rng).y_val) > 0


def test_model_too_big_for_memory_is_refused_before_allocating(monkeypatch):
    train_module = importlib.import_module("framework.engine.settings")
    from framework.core.errors import ConfigError

    monkeypatch.setattr(train_module, "available_memory", lambda: 10 ** 6)  # 1 MB
    with pytest.raises(ConfigError) as info:
        train_module.build_model("mlp", {"hidden_sizes": [1000]}, 64, 10, np.float64)
    assert "'model'" in str(info.value) and "hidden_sizes=[1000]" in str(info.value) and "0.001 GB" in str(info.value)
    assert train_module.build_model("mlp", {"hidden_sizes": [4]}, 64, 10, np.float64).layout.size == 64 * 4 + 4 + 50
