"""A corpus of bad inputs (command-line overrides, npz and CIFAR files, checkpoints, ensemble sources, unwritable or
full folders): each must end with exit code 2, one `error:` paragraph naming the key or file, no traceback, and no
temporary or half-written file left behind. The cases run through the real entry points (`python -m framework`,
`framework.evaluate`, `framework.ensemble`) in forked copies of the test process (tests/inprocess.py), so the
hundreds of cases pay the imports once; tests/test_bad_input.py keeps real subprocess runs of a few of them."""
from __future__ import annotations

import errno
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import uuid

import h5py
import numpy as np
import pytest

from conftest import compose_config
from inprocess import run_forked, warm_up

pytestmark = pytest.mark.slow  # ~180 forked cases: about two minutes on 2 busy cores


@pytest.fixture(scope="module", autouse=True)
def _warm():
    warm_up()


def assert_clear(result, pieces=(), root=None, code=2):
    """Exit `code`, exactly one `error:` paragraph holding every piece, no traceback, no *.tmp under `root`."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    assert result.returncode == code, (result.returncode, text)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for piece in pieces:
        assert str(piece) in errors[0], (piece, errors[0])
    if root is not None:
        leftovers = [p for p in pathlib.Path(root).rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers, leftovers


# ---------------------------------------------------------------------------------------------------------------
# command-line overrides (config validation only: they stop before training)
# ---------------------------------------------------------------------------------------------------------------
CONFIG_CASES = [
    # top-level numbers
    (["lr=-1"], ["'lr'", "-1"]), (["lr=0"], ["'lr'"]), (["lr=nan"], ["'lr'"]), (["lr=inf"], ["'lr'"]),
    (["lr=abc"], ["'lr'", "abc"]), (["lr=true"], ["'lr'"]), (["reg=-1"], ["'reg'"]), (["reg=nan"], ["'reg'"]),
    (["reg=abc"], ["'reg'"]), (["epochs=0"], ["'epochs'"]), (["epochs=-1"], ["'epochs'"]),
    (["epochs=1.5"], ["'epochs'"]), (["epochs=abc"], ["'epochs'"]), (["epochs=inf"], ["'epochs'"]),
    (["batch_size=0"], ["'batch_size'"]), (["batch_size=-3"], ["'batch_size'"]),
    (["batch_size=2.5"], ["'batch_size'"]), (["batch_size=abc"], ["'batch_size'"]),
    (["batch_size=true"], ["'batch_size'"]), (["seed=-1"], ["'seed'"]),
    (["seed=18446744073709551616"], ["'seed'", "2**63"]), (["seed=1.5"], ["'seed'"]), (["seed=abc"], ["'seed'"]),
    (["dtype=float16"], ["'dtype'", "float32"]), (["dtype=int"], ["'dtype'"]), (["eval_with=best"], ["'eval_with'"]),
    (["eval_with=ema", "ema.decay=0"], ["'eval_with'", "ema.decay"]), (["fused_steps=5"], ["'fused_steps'"]),
    (["fused_steps=abc"], ["'fused_steps'"]),
    # sections given a scalar, or bad values inside them (full dotted keys)
    (["ema=5"], ["'ema'"]), (["ema=abc"], ["'ema'"]), (["ema=[1]"], ["'ema'"]), (["ema.decay=1"], ["'ema.decay'"]),
    (["ema.decay=-0.1"], ["'ema.decay'"]), (["ema.decay=abc"], ["'ema.decay'"]), (["ema.decay=true"], ["'ema.decay'"]),
    (["ema.warmup=5"], ["'ema.warmup'"]), (["monitor=5"], ["'monitor'"]), (["monitor.every=-1"], ["'monitor.every'"]),
    (["monitor.every=1.5"], ["'monitor.every'"]), (["monitor.every=abc"], ["'monitor.every'"]),
    (["early_stop=1"], ["'early_stop'"]), (["early_stop.loss_multiple=-1"], ["'early_stop.loss_multiple'"]),
    (["early_stop.loss_multiple=abc"], ["'early_stop.loss_multiple'"]),
    (["early_stop.grace_steps=-1"], ["'early_stop.grace_steps'"]),
    (["early_stop.grace_steps=0.5"], ["'early_stop.grace_steps'"]),
    (["checkpoint=abc"], ["'checkpoint'"]), (["checkpoint=5"], ["'checkpoint'"]), (["checkpoint=[1]"], ["'checkpoint'"]),
    (["checkpoint.every=-1"], ["checkpoint.every"]), (["checkpoint.every=1.5"], ["checkpoint.every"]),
    (["checkpoint.every=abc"], ["checkpoint.every"]), (["checkpoint.every_steps=-1"], ["checkpoint.every_steps"]),
    (["checkpoint.keep_top_k=-2"], ["checkpoint.keep_top_k"]), (["checkpoint.keep_top_k=abc"], ["checkpoint.keep_top_k"]),
    (["tensorboard=abc"], ["'tensorboard'"]), (["tensorboard.enabled=5"], ["tensorboard.enabled"]),
    (["tensorboard.enabled=abc"], ["tensorboard.enabled"]), (["tensorboard.histogram_every=-1"], ["tensorboard.histogram_every"]),
    (["tensorboard.sample_rows=0"], ["tensorboard.sample_rows"]), (["tensorboard.histogram_bins=2.5"], ["tensorboard.histogram_bins"]),
    (["diagnostics=abc"], ["'diagnostics'"]), (["diagnostics.enabled=abc"], ["diagnostics.enabled"]),
    (["diagnostics.ratio_low=0.1"], ["diagnostics.ratio_low"]), (["diagnostics.overfit_gap=2"], ["diagnostics.overfit_gap"]),
    (["diagnostics.capacity_gap=0"], ["diagnostics.capacity_gap"]), (["diagnostics.capacity_acc=-1"], ["diagnostics.capacity_acc"]),
    (["diagnostics.dead_fraction=5"], ["diagnostics.dead_fraction"]), (["diagnostics.saturation=abc"], ["diagnostics.saturation"]),
    (["preflight.strict=5"], ["preflight.strict"]), (["preflight.mode=abc"], ["preflight.mode"]),
    (["preflight.chance.rows=0"], ["preflight.chance.rows"]),
    # unknown keys: typos are refused with close matches, never ignored
    (["+epoch=5"], ["'epoch'", "epochs"]), (["+foo=1"], ["'foo'"]), (["foo=1"], ["'foo'"]), (["++foo=1"], ["'foo'"]),
    (["+lr_rate=1"], ["'lr_rate'"]), (["monitor.evry=5"], ["monitor.evry", "monitor.every"]),
    (["+tensorboard.colour=1"], ["tensorboard.colour"]), (["model.foo=1"], ["model.foo"]), (["+model.foo=1"], ["model.foo"]),
    (["data.foo=1"], ["data.foo"]), (["checkpoint.evry=1"], ["checkpoint.evry", "checkpoint.every"]),
    (["+checkpont.every=1"], ["checkpont.every"]), (["+experimnt=ensemble_seeds"], ["experimnt", "experiment"]),
    (["diagnostics.ratio=1"], ["diagnostics.ratio"]), (["early_stop.grace=1"], ["early_stop.grace"]),
    (["ema.decy=0.9"], ["ema.decy", "ema.decay"]), (["optimizer.bet1=0.9"], ["optimizer.bet1", "optimizer.beta1"]),
    (["model=svm", "model.hidden_sizes=[1]"], ["model.hidden_sizes"]), (["+bach_size=8"], ["bach_size", "batch_size"]),
    (["+seeds=1"], ["'seeds'"]), (["preflight.chance.rowz=3"], ["preflight.chance.rowz"]),
    # unknown component names
    (["optimizer=adamm"], ["adamm", "adam"]), (["model=mlpp"], ["mlpp", "mlp"]), (["data=cifar"], ["cifar", "cifar10"]),
    (["schedule=cosin"], ["cosin", "cosine"]), (["regularizer=l3"], ["l3", "l2"]),
    (["+momentum_schedule=rampp"], ["rampp", "ramp"]), (["preflight=quik"], ["quik", "quick"]),
    (["+experiment=nope"], ["nope", "ensemble_seeds"]),
    # component options
    (["model.hidden_sizes=[0]"], ["model.hidden_sizes[0]"]), (["model.hidden_sizes=[-1]"], ["model.hidden_sizes[0]"]),
    (["model.hidden_sizes=[1.5]"], ["model.hidden_sizes[0]"]), (["model.hidden_sizes=abc"], ["model.hidden_sizes"]),
    (["model.hidden_sizes=[1e9]"], ["'model'", "hidden_sizes", "memory"]),
    (["model.hidden_sizes=[1000000,1000000]"], ["'model'", "memory"]),
    (["model.keep_prob=0"], ["model.keep_prob"]), (["model.keep_prob=1.5"], ["model.keep_prob"]),
    (["model.activation=sigmoid"], ["model.activation", "relu"]), (["optimizer.beta1=1.5"], ["optimizer.beta1"]),
    (["optimizer.beta2=-1"], ["optimizer.beta2"]), (["optimizer=momentum", "optimizer.momentum=2"], ["optimizer.momentum"]),
    (["schedule=step", "schedule.every=0"], ["schedule.every"]), (["schedule=step", "schedule.factor=-1"], ["schedule.factor"]),
    (["regularizer.reg=-1"], ["reg"]),
    (["+momentum_schedule=ramp", "momentum_schedule.start=1.5"], ["'momentum_schedule.start'"]),
    (["+momentum_schedule=ramp", "momentum_schedule.length=0"], ["'momentum_schedule.length'"]),
    # data options
    (["data.val_fraction=1"], ["data.val_fraction"]), (["data.val_fraction=-0.1"], ["data.val_fraction"]),
    (["data.test_fraction=1"], ["data.test_fraction"]), (["data.max_train=-1"], ["data.max_train"]),
    (["data.split_seed=-1"], ["data.split_seed"]), (["data.standardize=5"], ["data.standardize"]),
    (["data.val_fraction=0.6", "data.test_fraction=0.5"], ["data.val_fraction", "data.test_fraction"]),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"], ["data.val_fraction", "data.test_fraction"]),
    (["data=spiral", "data.classes=1"], ["data.classes"]), (["data=spiral", "data.points_per_class=1"], ["data.points_per_class"]),
    (["data=spiral", "data.noise=-1"], ["data.noise"]), (["data=npz"], ["data.path"]),
    (["data=npz", "data.path=nope.npz"], ["nope.npz"]), (["data=cifar10", "data.path=nowhere"], ["nowhere"]),
    (["data=cifar10", "data.train_batches=9"], ["data.train_batches"]),
    # resume targets
    (["resume=nowhere"], ["resume=nowhere"]), (["resume=nowhere/last.h5"], ["nowhere/last.h5"]),
]


@pytest.mark.parametrize("args, pieces", CONFIG_CASES, ids=[" ".join(a) for a, _ in CONFIG_CASES])
def test_bad_override(tmp_path, args, pieces):
    assert_clear(run_forked(*args, cwd=tmp_path), pieces, root=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# npz files
# ---------------------------------------------------------------------------------------------------------------
def _xy(n=40, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, n)


def _npz(folder, **arrays):
    path = folder / f"{uuid.uuid4().hex[:8]}.npz"
    np.savez(path, **arrays)
    return path


def _npz_case(name, folder: pathlib.Path):
    """(path, extra overrides, pieces of the message) for the npz case `name`."""
    X, y = _xy()
    nan_X, inf_X = X.copy(), X.copy()
    nan_X[3, 1], inf_X[5, 0] = np.nan, np.inf
    if name == "string labels":
        return _npz(folder, X_train=X, y_train=np.array(["cat", "dog"] * 20)), [], ["y_train", "<U3"]
    if name == "string test labels":
        return _npz(folder, X_train=X, y_train=y, X_test=X, y_test=np.array(["a"] * 40)), [], ["y_test"]
    if name == "zero features":
        return _npz(folder, X_train=np.zeros((40, 0)), y_train=y), [], ["no feature columns"]
    if name == "single example":
        return _npz(folder, X_train=X[:1], y_train=y[:1]), [], ["no training examples", "data.val_fraction"]
    if name == "two examples":
        return _npz(folder, X_train=X[:2], y_train=y[:2]), [], ["no training examples"]
    if name == "labels 1e9":
        return _npz(folder, X_train=X, y_train=np.full(40, 1e9)), [], ["largest label", "data.num_classes"]
    if name == "labels 1e12":
        return _npz(folder, X_train=X, y_train=np.r_[np.zeros(39), 1e12]), [], ["largest label"]
    if name == "labels 1e12 with num_classes":
        return _npz(folder, X_train=X, y_train=np.r_[np.zeros(39), 1e12]), ["data.num_classes=3"], ["labels", "[0, 2]"]
    if name == "huge num_classes":
        return _npz(folder, X_train=X, y_train=y), ["data.num_classes=1000000000000"], ["'model'", "memory"]
    if name == "text file":
        path = folder / "text.npz"
        path.write_text("x,y\n1,2\n")
        return path, [], ["not an npz file", "text"]
    if name == "npy file":
        path = folder / "array.npz"
        with open(path, "wb") as f:
            np.save(f, X)
        return path, [], ["not an npz file", ".npy"]
    if name == "empty file":
        path = folder / "empty.npz"
        path.write_bytes(b"")
        return path, [], ["not an npz file"]
    if name == "zip without arrays":
        import zipfile

        path = folder / "plain.npz"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
        return path, [], ["plain.npz"]
    if name == "truncated npz":
        good = _npz(folder, X_train=X, y_train=y)
        path = folder / "cut.npz"
        path.write_bytes(good.read_bytes()[:300])
        return path, [], ["cut.npz"]
    if name == "object array":
        path = folder / "objects.npz"
        np.savez(path, X_train=np.array([{"a": 1}] * 40, dtype=object), y_train=y)
        return path, [], ["objects.npz"]
    if name == "missing y_train":
        return _npz(folder, X_train=X), [], ["y_train"]
    if name == "missing y_val":
        return _npz(folder, X_train=X, y_train=y, X_val=X), [], ["y_val"]
    if name == "mismatched lengths":
        return _npz(folder, X_train=X, y_train=y[:30]), [], ["40", "30"]
    if name == "nan features":
        return _npz(folder, X_train=nan_X, y_train=y), [], ["NaN", "row 3"]
    if name == "inf features":
        return _npz(folder, X_train=inf_X, y_train=y), [], ["infinite", "row 5"]
    if name == "negative labels":
        return _npz(folder, X_train=X, y_train=y - 1), [], ["labels", "-1"]
    if name == "fractional labels":
        return _npz(folder, X_train=X, y_train=y + 0.5), [], ["labels must be integers"]
    if name == "nan labels":
        return _npz(folder, X_train=X, y_train=np.r_[y[:39], np.nan]), [], ["labels must be integers"]
    if name == "labels above num_classes":
        return _npz(folder, X_train=X, y_train=y), ["data.num_classes=2"], ["labels", "[0, 1]"]
    if name == "1-D features":
        return _npz(folder, X_train=X[:, 0], y_train=y), [], ["shape"]
    if name == "2-D labels":
        return _npz(folder, X_train=X, y_train=y[:, None]), [], ["labels must have shape"]
    if name == "string features":
        return _npz(folder, X_train=np.array([["a"] * 5] * 40), y_train=y), [], ["features must be numeric"]
    if name == "val feature mismatch":
        return _npz(folder, X_train=X, y_train=y, X_val=X[:, :3], y_val=y), [], ["val split has 3 features"]
    if name == "no examples":
        return _npz(folder, X_train=np.zeros((0, 5)), y_train=np.zeros(0, dtype=int)), [], ["no examples"]
    if name == "data at scale 1e6":
        return _npz(folder, X_train=X * 1e6, y_train=y), [], ["scale", "data.standardize=true"]
    if name == "a folder":
        (folder / "dir.npz").mkdir(exist_ok=True)
        return folder / "dir.npz", [], ["dir.npz", "not a file"]
    raise KeyError(name)


NPZ_CASES = ["string labels", "string test labels", "zero features", "single example", "two examples", "labels 1e9",
             "labels 1e12", "labels 1e12 with num_classes", "huge num_classes", "text file", "npy file", "empty file",
             "zip without arrays", "truncated npz", "object array", "missing y_train", "missing y_val",
             "mismatched lengths", "nan features", "inf features", "negative labels", "fractional labels",
             "nan labels", "labels above num_classes", "1-D features", "2-D labels", "string features",
             "val feature mismatch", "no examples", "data at scale 1e6", "a folder"]


@pytest.mark.parametrize("name", NPZ_CASES)
def test_bad_npz(tmp_path, name):
    path, extra, pieces = _npz_case(name, tmp_path)
    result = run_forked("data=npz", f"data.path={path}", *extra, "++tensorboard.enabled=false", cwd=tmp_path)
    assert_clear(result, pieces, root=tmp_path)


def test_npz_data_scale_names_the_scale_and_standardize_fixes_it(tmp_path):
    """Features at scale 1e6 are named as a data-scale problem; with data.standardize=true the same file trains."""
    X, y = _xy(120, 4, 2)
    y = (X[:, 0] > 0).astype(int)
    path = _npz(tmp_path, X_train=X * 1e6, y_train=y)
    result = run_forked("data=npz", f"data.path={path}", "epochs=1", "++tensorboard.enabled=false", cwd=tmp_path)
    assert_clear(result, ["span a range of", "data.standardize=true"], root=tmp_path)
    spread = float(result.stderr.split("span a range of ")[1].split()[0])
    train = np.load(path)["X_train"]
    assert 1e6 < spread <= (train.max(axis=0) - train.min(axis=0)).max()  # std-1 normal draws times 1e6
    ok = run_forked("data=npz", f"data.path={path}", "epochs=1", "data.standardize=true",
                    "++tensorboard.enabled=false", "checkpoint=null", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_batch_larger_than_data_gets_a_notice(tmp_path):
    """30 examples: 6 go to test (0.2), 4 to val (0.15 of the whole), 20 train."""
    X, y = _xy(30, 4, 2)
    path = _npz(tmp_path, X_train=X, y_train=y)
    result = run_forked("data=npz", f"data.path={path}", "batch_size=1000", "epochs=1", "preflight=off",
                        "++tensorboard.enabled=false", "checkpoint=null", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    notice = [line for line in (result.stdout + result.stderr).splitlines() if "notice" in line]
    assert len(notice) == 1 and "full batch" in notice[0] and "20 training examples" in notice[0], notice


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 batches
# ---------------------------------------------------------------------------------------------------------------
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def _cifar(folder: pathlib.Path, batch, test_batch=None) -> pathlib.Path:
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = test_batch if (name == "test_batch" and test_batch is not None) else batch
        with open(folder / name, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                pickle.dump(content, f, protocol=2)
    return folder


def _good_batch(n=20):
    rng = np.random.default_rng(0)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}


CIFAR_CASES = {
    "rows of the wrong size": ({b"data": np.zeros((20, 1000), np.uint8), b"labels": [0] * 20}, ["(20, 1000)", "3072"]),
    "data not a multiple of 3072": ({b"data": np.zeros(5000, np.uint8), b"labels": [0] * 2}, ["3072"]),
    "string labels": ({**_good_batch(), b"labels": ["cat"] * 20}, ["b'labels'", "integers"]),
    "too few labels": ({**_good_batch(), b"labels": [1, 2, 3]}, ["b'labels'", "20"]),
    "float pixels": ({**_good_batch(), b"data": np.full((20, 3072), 0.5)}, ["uint8"]),
    "pixels above 255": ({**_good_batch(), b"data": np.full((20, 3072), 300)}, ["uint8"]),
    "labels out of range": ({**_good_batch(), b"labels": [12] * 20}, ["labels", "[0, 9]"]),
    "missing keys": ({b"pixels": np.zeros((2, 3072), np.uint8)}, ["b'data'"]),
    "a list, not a dict": ([1, 2, 3], ["b'data'"]),
    "code in the pickle": ({b"data": Evil(), b"labels": [0]}, ["refusing to unpickle", "system"]),
    "text file": (b"hello, not a pickle\n", ["not a readable CIFAR-10 batch"]),
    "truncated pickle": (pickle.dumps(_good_batch(), protocol=2)[:500], ["not a readable CIFAR-10 batch"]),
}


@pytest.mark.parametrize("name", CIFAR_CASES)
def test_bad_cifar(tmp_path, name):
    batch, pieces = CIFAR_CASES[name]
    folder = _cifar(tmp_path / "cifar", batch)
    result = run_forked("data=cifar10", f"data.path={folder}", "preflight=off", "++tensorboard.enabled=false",
                        cwd=tmp_path)
    assert_clear(result, ["cifar", *pieces], root=tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


def test_bad_cifar_test_batch_is_named(tmp_path):
    folder = _cifar(tmp_path / "cifar", _good_batch(), {b"data": np.zeros((3, 7), np.uint8), b"labels": [0] * 3})
    result = run_forked("data=cifar10", f"data.path={folder}", "preflight=off", cwd=tmp_path)
    assert_clear(result, ["test_batch", "3072"], root=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints and ensemble files with untrusted contents
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run of a small MLP on digits (its folder), trained in this process."""
    from framework.engine.train import train

    folder = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config("epochs=2", "model.hidden_sizes=[8]", "preflight=off", "++tensorboard.enabled=false")
    train(cfg, run_dir=folder)
    return folder


def _copy_checkpoint(trained, folder: pathlib.Path, edit=None) -> pathlib.Path:
    """A copy of the trained run folder under `folder` with `edit(h5py.File)` applied to its last.h5."""
    run = folder / f"run_{uuid.uuid4().hex[:6]}"
    shutil.copytree(trained, run)
    path = run / "checkpoints" / "last.h5"
    if edit is not None:
        with h5py.File(path, "r+") as f:
            edit(f)
    return path


def _set_config(text):
    def edit(f):
        f.attrs["config"] = text
    return edit


HOME = os.path.expanduser("~")
EVIL_CONFIGS = {
    "python object tag": "!!python/object/apply:os.system ['echo pwned > pwned.txt']\n",
    "python tag inside": "model: !!python/object/apply:os.system ['echo pwned > pwned.txt']\ndata: {name: digits}\n",
    "invalid yaml": "model: [unclosed\n  data: {\n",
    "a scalar": "42\n",
    "a list": "- model\n- data\n",
    "empty": "",
    "env interpolation": "model: {name: mlp, hidden_sizes: [8]}\ndata: {name: npz, path: '${oc.env:HOME}'}\n",
    "interpolation in a key": "model: {name: mlp}\n'${oc.env:HOME}': 1\n",
    "missing value marker": "model: {name: mlp, hidden_sizes: '???'}\ndata: {name: digits}\n",
    "no model section": "data: {name: digits}\nseed: 0\n",
    "model not a mapping": "model: mlp\ndata: {name: digits}\n",
}
CONFIG_PIECES = {"env interpolation": ["${"], "interpolation in a key": ["${"], "missing value marker": ["???"],
                 "no model section": ["'model'"], "model not a mapping": ["'model'"]}


THROUGH_HYDRA = ("python object tag", "invalid yaml", "a scalar", "env interpolation", "no model section")
CONFIG_WAYS = [(name, how) for name in EVIL_CONFIGS for how in ("evaluate", "load")] + \
    [(name, how) for name in THROUGH_HYDRA for how in ("resume", "ensemble source")]


@pytest.mark.parametrize("name, how", CONFIG_WAYS)
def test_checkpoint_with_bad_config(trained, tmp_path, name, how):
    path = _copy_checkpoint(trained, tmp_path, _set_config(EVIL_CONFIGS[name]))
    pieces = [str(path) if how != "ensemble source" else path.name, *CONFIG_PIECES.get(name, [])]
    if how == "load":
        import framework
        from framework.core.errors import FrameworkError

        with pytest.raises(FrameworkError) as info:
            framework.load(path)
        for piece in pieces:
            assert piece in str(info.value)
        assert HOME not in str(info.value).replace(str(path), "")
    else:
        if how == "evaluate":
            result = run_forked(f"checkpoint={path}", module="framework.evaluate", cwd=tmp_path)
        elif how == "resume":
            result = run_forked(f"resume={path}", "epochs=3", cwd=tmp_path)
        else:
            result = run_forked(f"source=[{path}]", "strategy=snapshots", module="framework.ensemble", cwd=tmp_path)
        assert_clear(result, pieces, root=tmp_path)
        assert HOME not in (result.stdout + result.stderr).replace(str(tmp_path), "")
    assert not (tmp_path / "pwned.txt").exists()


def _edit_rng(f, name, value):
    """Replace one stream's bit-generator state in the root `state` JSON (format 2)."""
    state = json.loads(f.attrs["state"])
    state["rng"][name] = value
    f.attrs["state"] = json.dumps(state)


def _bad_rng(f):
    _edit_rng(f, "order", {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}, "has_uint32": 0,
                           "uinteger": 0})


def _rng_not_json(f):
    f.attrs["state"] = "not json"


def _rng_wrong_generator(f):
    _edit_rng(f, "dropout", {"bit_generator": "MT19937", "state": {"key": [1, 2], "pos": 0}})


DAMAGED = {
    "bad RNG state": (_bad_rng, ["'order'"]),
    "RNG state not JSON": (_rng_not_json, ["damaged"]),
    "RNG of another generator": (_rng_wrong_generator, ["'dropout'"]),
    "config not text": (lambda f: f.attrs.__setitem__("config", 5), ["config"]),
    "config attribute missing": (lambda f: f.attrs.__delitem__("config"), ["config"]),
    "layout damaged": (lambda f: f.attrs.__setitem__("layout", "[{"), ["damaged"]),
    "params missing": (lambda f: f.__delitem__("params"), ["params"]),
    "newer format": (lambda f: f.attrs.__setitem__("format_version", 99), ["newer"]),
    "another HDF5 file": (lambda f: f.attrs.__setitem__("format", "something-else"), ["not a checkpoint"]),
}


DAMAGED_WAYS = [(name, how) for name in DAMAGED for how in ("resume", "evaluate")
                if how == "resume" or "RNG" not in name]  # prediction never reads the random state


@pytest.mark.parametrize("name, how", DAMAGED_WAYS)
def test_damaged_checkpoint(trained, tmp_path, name, how):
    edit, pieces = DAMAGED[name]
    path = _copy_checkpoint(trained, tmp_path, edit)
    if how == "resume":
        result = run_forked(f"resume={path}", "epochs=3", cwd=tmp_path)
    else:
        result = run_forked(f"checkpoint={path}", module="framework.evaluate", cwd=tmp_path)
    assert_clear(result, [str(path), *pieces], root=tmp_path)


@pytest.mark.parametrize("content, pieces", [(b"", ["not a readable HDF5"]), (b"hello world\n" * 10, ["not a readable HDF5"]),
                                             (None, ["does not exist"])], ids=["empty", "text", "missing"])
@pytest.mark.parametrize("how", ["resume", "evaluate"])
def test_not_a_checkpoint(tmp_path, content, pieces, how):
    path = tmp_path / "checkpoints" / "last.h5"
    path.parent.mkdir()
    if content is not None:
        path.write_bytes(content)
    else:
        path = tmp_path / "nope.h5"
    result = run_forked(f"resume={path}" if how == "resume" else f"checkpoint={path}",
                        module="framework" if how == "resume" else "framework.evaluate", cwd=tmp_path)
    if how == "resume" and content is None:
        pieces = ["no such run directory or checkpoint file"]
    assert_clear(result, [str(path), *pieces], root=tmp_path)


def _ensemble_file(folder: pathlib.Path, config: str) -> pathlib.Path:
    """An HDF5 file that claims to be an ensemble file and stores `config`."""
    path = folder / "ens.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "framework-ensemble"
        f.attrs["format_version"] = 1
        f.attrs["config"] = config
        f.create_group("members")
    return path


@pytest.mark.parametrize("name", ["python object tag", "invalid yaml", "a scalar", "env interpolation"])
def test_ensemble_file_with_bad_config(tmp_path, name):
    import framework
    from framework.core.errors import FrameworkError

    path = _ensemble_file(tmp_path, EVIL_CONFIGS[name])
    with pytest.raises(FrameworkError) as info:
        framework.load(path)
    assert str(path) in str(info.value) and HOME not in str(info.value).replace(str(tmp_path), "")
    result = run_forked(f"checkpoint={path}", module="framework.evaluate", cwd=tmp_path)
    assert_clear(result, [str(path)], root=tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


# ---------------------------------------------------------------------------------------------------------------
# ensemble sources and options
# ---------------------------------------------------------------------------------------------------------------
# options that are wrong on a good source: name -> (overrides, pieces the message must hold)
ENSEMBLE_OPTION_CASES = {
    "unknown strategy": (["strategy=bogus"], ["strategy", "bogus"]),
    "unknown combine": (["combine=bogus"], ["combine", "bogus"]),
    "unknown weights": (["weights=bogus"], ["weights", "bogus"]),
    "topk.k=1": (["topk.k=1"], ["topk.k"]),
    "typo key": (["+strat=seeds"], ["strat", "strategy"]),
    "typo section key": (["topk.kk=3"], ["topk.kk", "topk.k"]),
    "timing.repeats=-1": (["timing.repeats=-1"], ["timing.repeats"]),
    "distill.temperature=0": (["distill.temperature=0"], ["distill.temperature"]),
}


def _ensemble_source(name, trained, folder: pathlib.Path):
    """(source list text, extra overrides, pieces) for the ensemble case `name`."""
    if name in ENSEMBLE_OPTION_CASES:
        return (f"[{trained}]", *ENSEMBLE_OPTION_CASES[name])
    if name == "missing folder":
        return "[nowhere]", [], ["nowhere"]
    if name == "empty folder":
        (folder / "empty").mkdir()
        return f"[{folder / 'empty'}]", [], ["holds no runs"]
    if name == "folder of text files":
        (folder / "texts").mkdir()
        (folder / "texts" / "notes.txt").write_text("hello")
        return f"[{folder / 'texts'}]", [], ["holds no runs"]
    if name == "text file as checkpoint":
        (folder / "fake.h5").write_text("hello")
        return f"[{folder / 'fake.h5'}]", [], ["fake.h5", "HDF5"]
    if name == "run with a damaged last.h5":
        run = folder / "damaged"
        shutil.copytree(trained, run)
        for p in (run / "checkpoints").glob("*.h5"):
            p.write_bytes(p.read_bytes()[:200])
        return f"[{run}]", [], ["damaged"]
    if name == "empty list":
        return "[]", [], ["'source'"]
    if name == "latest without runs":
        (folder / "sweeps").mkdir()
        return f"[{folder / 'sweeps' / 'latest'}]", [], ["latest"]
    if name == "unknown strategy":
        return f"[{trained}]", ["strategy=bogus"], ["strategy", "bogus"]
    if name == "unknown combine":
        return f"[{trained}]", ["combine=bogus"], ["combine", "bogus"]
    if name == "unknown weights":
        return f"[{trained}]", ["weights=bogus"], ["weights", "bogus"]
    if name == "topk.k=1":
        return f"[{trained}]", ["topk.k=1"], ["topk.k"]
    if name == "typo key":
        return f"[{trained}]", ["+strat=seeds"], ["strat", "strategy"]
    if name == "typo section key":
        return f"[{trained}]", ["topk.kk=3"], ["topk.kk", "topk.k"]
    if name == "timing.repeats=-1":
        return f"[{trained}]", ["timing.repeats=-1"], ["timing.repeats"]
    if name == "distill.temperature=0":
        return f"[{trained}]", ["distill.temperature=0"], ["distill.temperature"]
    raise KeyError(name)


ENSEMBLE_CASES = ["missing folder", "empty folder", "folder of text files", "text file as checkpoint",
                  "run with a damaged last.h5", "empty list", "latest without runs", *ENSEMBLE_OPTION_CASES]


@pytest.mark.parametrize("name", ENSEMBLE_CASES)
def test_bad_ensemble_source(trained, tmp_path, name):
    source, extra, pieces = _ensemble_source(name, trained, tmp_path)
    result = run_forked(f"source={source}", *extra, module="framework.ensemble", cwd=tmp_path)
    assert_clear(result, pieces, root=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# folders that cannot be written, disks that fill up
# ---------------------------------------------------------------------------------------------------------------
def _mount_tmpfs(folder: pathlib.Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


def _unmount(folder: pathlib.Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def mount_point(tmp_path):
    mounted = []

    def mount(folder, options):
        if not _mount_tmpfs(folder, options):
            pytest.skip("cannot mount a tmpfs here (needs root); the injected-error tests cover the same paths")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        _unmount(folder)


def test_read_only_outputs_folder(tmp_path, mount_point):
    mount_point(tmp_path / "outputs", "size=64k,ro")
    result = run_forked("epochs=1", "preflight=off", cwd=tmp_path)
    assert_clear(result, ["outputs", "Read-only file system"])


def test_read_only_run_folder_on_resume(trained, tmp_path, mount_point):
    run = mount_point(tmp_path / "run", "size=4m")
    shutil.copytree(trained, run, dirs_exist_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(run)], check=True)
    result = run_forked(f"resume={run}", "epochs=3", cwd=tmp_path)
    assert_clear(result, [str(run), "Read-only file system"])


def test_full_disk_during_training(tmp_path, mount_point):
    """A tmpfs too small for the run's checkpoints: one paragraph naming the file, no temporary file left, and the
    checkpoint written before the disk filled still loads."""
    out = mount_point(tmp_path / "outputs", "size=160k")
    result = run_forked("epochs=30", "model.hidden_sizes=[64]", "preflight=off", "++tensorboard.enabled=false",
                        cwd=tmp_path)
    assert_clear(result, ["no space left", "checkpoints/epoch001_val"], root=out)
    assert not list(out.rglob("*.h5"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_write_error_in_checkpoint_path(trained, tmp_path, monkeypatch, code):
    """An OSError injected into the third checkpoint write (the forked run inherits the patch): exit 2 naming
    the file, no temporary file left, and the last.h5 written before is intact."""
    import framework
    from framework.io import checkpoint

    real, calls = checkpoint._write_file, []

    def failing(f, *args, **kw):
        calls.append(1)
        if len(calls) >= 3:
            raise OSError(code, os.strerror(code), f.filename)
        return real(f, *args, **kw)

    monkeypatch.setattr(checkpoint, "_write_file", failing)
    result = run_forked("epochs=5", "model.hidden_sizes=[8]", "preflight=off", "++tensorboard.enabled=false",
                        "hydra.run.dir=run", cwd=tmp_path)
    # writes: epoch001 file, last.h5 (always after the first epoch), epoch002 file: the third one fails
    assert_clear(result, ["epoch002_val", ".h5:", "Cannot write"], root=tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.h5"
    assert framework.load(last).epoch == 1


def test_write_error_in_summary_leaves_no_temp_file(tmp_path, monkeypatch):
    from framework.core import files

    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    result = run_forked("epochs=1", "model.hidden_sizes=[8]", "preflight=off", "++tensorboard.enabled=false",
                        "checkpoint=null", "hydra.run.dir=run", cwd=tmp_path)
    monkeypatch.setattr(files.os, "fsync", real)
    assert_clear(result, ["no space left"], root=tmp_path)
    assert not (tmp_path / "run" / "summary.json").exists()
