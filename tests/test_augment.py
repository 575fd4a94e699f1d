"""Data augmentation layers (random_shift, random_flip): the kernels against a NumPy pad-and-crop / mirror for fixed
draws, their backward as the adjoint, the draws, eval mode as the identity, bounds with NaN/inf and bad sizes, a
bit-exact resume of a run with augmentation, and bad options as one paragraph with exit 2. The gradient check and
the NaN/inf run of every layer are test_layers' (parametrized over LAYERS)."""
from __future__ import annotations

import numpy as np
import pytest

from framework import MODELS
from framework.core.errors import ConfigError
from framework.layers import kernels_augment as KA
from framework.layers.sequential import Sequential, SequentialConfig

from conftest import FAST, assert_clean_failure

DTYPES = [np.float64, np.float32]


def shift_reference(x, dy, dx, p):
    """x (H, W, C) zero padded by p on each side, then the H x W window at (p - dy, p - dx): a random crop."""
    H, W, _ = x.shape
    padded = np.pad(x, ((p, p), (p, p), (0, 0)))
    return padded[p - dy:p - dy + H, p - dx:p - dx + W]


@pytest.mark.parametrize("dtype", DTYPES)
def test_shift_matches_pad_and_crop(dtype):
    """Every (dy, dx) in [-2, 2]^2 on 3-channel 4x5 images: the kernel equals pad-by-2-then-crop, vacated pixels
    0, bit for bit; an empty mask (eval) copies."""
    H, W, C, p = 4, 5, 3, 2
    rng = np.random.default_rng(0)
    draws = np.array([(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)], dtype=dtype)
    n = len(draws)
    x = rng.standard_normal((n, H * W * C)).astype(dtype)
    out = np.full_like(x, np.nan)
    KA.shift_rows(x, draws, out, H, W, C, 1)
    for i, (dy, dx) in enumerate(draws.astype(int)):
        want = shift_reference(x[i].reshape(H, W, C), dy, dx, p)
        np.testing.assert_array_equal(out[i].reshape(H, W, C), want, err_msg=f"shift ({dy}, {dx})")
    assert np.count_nonzero(out[draws[:, 0] == 2][:, :2 * W * C]) == 0  # dy = 2: the top two rows vacated
    eval_out = np.full_like(x, np.nan)
    KA.shift_rows(x, draws[:0], eval_out, H, W, C, 1)
    np.testing.assert_array_equal(eval_out, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shift_of_a_signal_moves_along_its_length_only(dtype):
    L, C = 7, 2
    x = np.arange(2 * L * C, dtype=dtype).reshape(2, L * C) + 1
    out = np.zeros_like(x)
    KA.shift_rows(x, np.array([[2], [-3]], dtype=dtype), out, 1, L, C, 1)
    np.testing.assert_array_equal(out[0].reshape(L, C), np.pad(x[0].reshape(L, C), ((2, 0), (0, 0)))[:L])
    np.testing.assert_array_equal(out[1].reshape(L, C), np.pad(x[1].reshape(L, C), ((0, 3), (0, 0)))[3:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_flip_mirrors_the_drawn_examples(dtype):
    H, W, C = 3, 4, 2
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, H * W * C)).astype(dtype)
    mask = np.array([[1.0], [0.0], [np.nan]], dtype=dtype)  # mirror, keep, NaN: keep
    out = np.full_like(x, np.nan)
    KA.flip_rows(x, mask, out, H, W, C)
    np.testing.assert_array_equal(out[0].reshape(H, W, C), x[0].reshape(H, W, C)[:, ::-1, :])
    np.testing.assert_array_equal(out[1:], x[1:])
    eval_out = np.full_like(x, np.nan)
    KA.flip_rows(x, mask[:0], eval_out, H, W, C)
    np.testing.assert_array_equal(eval_out, x)


@pytest.mark.parametrize("image", [(4, 5, 3), (1, 9, 2)])
def test_backward_is_the_adjoint_of_forward(image):
    """<forward(x), g> = <x, backward(g)> for shifts (sign -1 reverses them) and flips, images and signals: the
    backward the gradient check then exercises through a layer with weights before it."""
    H, W, C = image
    rng = np.random.default_rng(2)
    n = 25
    x, g = rng.standard_normal((n, H * W * C)), rng.standard_normal((n, H * W * C))
    shifts = rng.integers(-2, 3, (n, 2) if H > 1 else (n, 1)).astype(np.float64)
    flips = rng.integers(0, 2, (n, 1)).astype(np.float64)
    fx, bg = np.empty_like(x), np.empty_like(g)
    KA.shift_rows(x, shifts, fx, H, W, C, 1)
    KA.shift_rows(g, shifts, bg, H, W, C, -1)
    np.testing.assert_allclose(np.sum(fx * g, axis=1), np.sum(x * bg, axis=1), rtol=1e-12, atol=1e-12)
    KA.flip_rows(x, flips, fx, H, W, C)
    KA.flip_rows(g, flips, bg, H, W, C)
    np.testing.assert_allclose(np.sum(fx * g, axis=1), np.sum(x * bg, axis=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_draws_are_uniform_integers_and_flips_have_probability_p(dtype):
    u = np.random.default_rng(3).random(50_000, dtype=dtype)
    shifts = u.copy()
    KA.uniform_to_shift(shifts, 2)
    values, counts = np.unique(shifts, return_counts=True)
    assert values.tolist() == [-2, -1, 0, 1, 2]
    assert np.all(np.abs(counts / u.size - 0.2) < 0.01), counts  # 5 values, each ~1/5 (sd ~0.0018)
    edges = np.array([0.0, np.nextafter(dtype(1), dtype(0)), 0.4, 0.6 - 1e-6], dtype=dtype)
    KA.uniform_to_shift(edges, 2)
    assert edges.tolist() == [-2, 2, 0, 0]  # u just under 1 cannot round up to 3
    flips = u.copy()
    KA.uniform_to_flip(flips, 0.3)
    assert set(np.unique(flips)) == {0.0, 1.0} and abs(flips.mean() - 0.3) < 0.01


def augmented(layers_before, shape=(1, 6, 6), dtype=np.float64):
    """(augmented model, plain model): the same conv - relu - affine net, with `layers_before` first."""
    core = [{"type": "conv2d", "filters": 3, "size": 3, "pad": 1}, "relu", {"type": "affine"}]
    models = [Sequential(SequentialConfig(layers=front + core, input_shape=list(shape)))
              for front in (layers_before, [])]
    for m in models:
        m.setup(int(np.prod(shape)), 3, dtype)
    return models


def test_eval_mode_is_the_identity_and_training_draws_from_the_generator():
    """Scores (eval) of a model with augmentation equal those of the same model without, bit for bit (the layers
    hold no parameters: one layout); a training step shifts the input by the drawn (dy, dx) and flips it; the same
    seed gives the same draws."""
    aug, plain = augmented([{"type": "random_shift", "pixels": 2}, {"type": "random_flip", "p": 0.5}])
    assert aug.layout.size == plain.layout.size
    rng = np.random.default_rng(4)
    theta = plain.init_params(rng)
    X, y = rng.standard_normal((8, 36)), rng.integers(0, 3, 8)
    np.testing.assert_array_equal(aug.scores(theta, X), plain.scores(theta, X))
    g1, g2 = np.zeros_like(theta), np.zeros_like(theta)
    assert aug.loss_grad(theta, g1, X, y) == plain.loss_grad(theta, g2, X, y)  # no noise: no augmentation
    np.testing.assert_array_equal(g1, g2)

    noise = aug.sample_noise(np.random.default_rng(5), 8).copy()
    again = aug.sample_noise(np.random.default_rng(5), 8)
    np.testing.assert_array_equal(noise, again)
    shifts, flips = noise[:16].reshape(8, 2).astype(int), noise[16:].reshape(8, 1)
    assert shifts.min() >= -2 and shifts.max() <= 2 and len({tuple(s) for s in shifts}) > 1
    aug.loss_grad(theta, g1, X, y, noise=noise)
    first = aug.plan.activation(aug._work, 8, 2).reshape(8, 6, 6, 1)  # after shift and flip
    for i in range(8):
        want = shift_reference(X[i].reshape(6, 6, 1), *shifts[i], 2)
        np.testing.assert_array_equal(first[i], want[:, ::-1] if flips[i, 0] else want)


def test_bounds_with_nan_inf_and_sizes_that_disagree():
    """NaN, inf and huge draws are no shift or clamped (at most the side: the image is vacated); masks with fewer
    rows, sizes larger than the rows and negative sizes write nothing outside their arrays."""
    H, W, C, guard = 3, 4, 2, 6
    x = np.arange(1, 5 * H * W * C + 1, dtype=np.float64).reshape(5, -1)
    x[0, 0], x[1, 3] = np.nan, np.inf
    base = np.full(5 * H * W * C + 2 * guard, -7.0)
    out = base[guard:-guard].reshape(5, -1)
    draws = np.array([[np.nan, np.nan], [np.inf, 0], [-1e300, 1e300], [0, -np.inf], [1.9, -0.5]])
    KA.shift_rows(x, draws, out, H, W, C, 1)
    np.testing.assert_array_equal(out[0], x[0])  # NaN draws: no shift (the NaN input copied)
    assert np.all(out[1:4] == 0)  # shifted by a full side or more: vacated
    np.testing.assert_array_equal(out[4].reshape(H, W, C), shift_reference(x[4].reshape(H, W, C), 1, 0, 1))  # truncated
    out[...] = -5.0
    for args in [(x, draws[:2], out), (x[:, :10], draws, out), (x, draws, out[:, :10])]:
        KA.shift_rows(*args, H, W, C, -1)
        KA.flip_rows(*args, H, W, C)
    assert np.all(out[2:] == -5.0)  # two draw rows: two rows written; rows shorter than H*W*C: none
    KA.shift_rows(x, draws, out, -1, W, C, 1)
    KA.flip_rows(x, draws, out, H, 0, C)
    assert np.all(base[:guard] == -7.0) and np.all(base[-guard:] == -7.0)


@pytest.mark.parametrize("layers, key, piece", [
    ([{"type": "random_shift", "pixels": 6}], "model.layers[0].pixels", "at most 5"),
    ([{"type": "random_shift", "pixels": -1}], "model.layers[0].pixels", "[0, inf)"),
    ([{"type": "random_flip", "p": 2}], "model.layers[0].p", "[0, 1]"),
])
def test_bad_options_name_the_key(layers, key, piece):
    with pytest.raises(ConfigError) as info:
        augmented(layers)
    assert info.value.key == key and piece in str(info.value)


def test_flat_features_are_refused():
    with pytest.raises(ConfigError) as info:
        MODELS.build("sequential", layers=["random_flip", {"type": "affine"}], input_shape=[64]).setup(64, 10)
    assert info.value.key == "model.layers[0]" and "(C, H, W) images or (C, L) signals" in str(info.value)


@pytest.mark.parametrize("item, pieces", [
    ("{type:random_shift,pixels:-1}", ["model.layers[0].pixels", "-1", "[0, inf)"]),
    ("{type:random_flip,p:2}", ["model.layers[0].p", "2", "[0, 1]"]),
])
def test_bad_option_through_the_cli_exits_2(cli, item, pieces):
    result = cli(*FAST, "model=sequential", f"model.layers=[{item},{{type:affine}}]")
    assert_clean_failure(result, pieces)
    assert result.returncode == 2
    assert len((result.stderr + result.stdout).strip().splitlines()) == 1  # one paragraph


def test_model_with_augmentation_resumes_bit_identical(tmp_path):
    """The draws come from the run's seeded dropout stream, saved in the checkpoint: a run cut mid-epoch and
    resumed ends bit-identical to the uninterrupted one."""
    from omegaconf import OmegaConf
    from test_checkpoint import check_exact_resume

    from conftest import FAST_BASE, compose_config

    layers = "[{type:random_shift,pixels:1},random_flip,{type:conv2d,filters:4,size:3,pad:1},relu,{type:affine}]"
    cfg = compose_config(*FAST_BASE, "data=digits", "model=sequential", "data.max_train=96", "batch_size=16",
                         "epochs=3", f"model.layers={layers}")
    OmegaConf.set_struct(cfg, False)
    read = check_exact_resume(tmp_path, cfg)
    assert read["theta"].size == 4 * 9 + 4 + 256 * 10 + 10
