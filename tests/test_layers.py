"""Layers (framework.layers): every entry of LAYERS, the user layer of tests/layer_plugins included, is built,
gradient-checked in float64, compared with a plain-NumPy forward (built-ins), fed NaN/inf inside guarded buffers;
the layered models train through the CLI."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from framework import LAYERS, MODELS, load_plugins
from framework.core.errors import ConfigError
from framework.layers import augment, builtin
from framework.layers import kernels_conv as KC
from framework.layers import kernels_elementwise as KE
from framework.layers import kernels_pool as KP
from framework.layers.sequential import Sequential, SequentialConfig
from framework.layers.spec import internal_shape, public_shape

from conftest import FAST, assert_clean_failure

PLUGIN_DIR = pathlib.Path(__file__).resolve().parent / "layer_plugins"
load_plugins([PLUGIN_DIR])  # the user layer joins every parametrized test below

# (input shape (C, H, W) / (C, L) / (D,), options, expected output shape) per layer; others get DEFAULT_CASE
CASES = {
    "affine": ((2, 4, 5), {"units": 6}, (6,)),
    "conv2d": ((2, 5, 6), {"filters": 3, "size": 3, "stride": 2, "pad": 1}, (3, 3, 3)),
    # L = Lo * stride with a 9-value patch: the in-place path (windows read where they are, dx by phases)
    "conv1d": ((3, 10), {"filters": 3, "size": 3, "stride": 2, "pad": 1}, (3, 5)),
    "maxpool2d": ((2, 4, 6), {"size": 2}, (2, 2, 3)),
    "maxpool1d": ((3, 8), {"size": 3, "stride": 2}, (3, 3)),  # overlapping windows
    "avgpool": ((2, 4, 6), {"size": 2, "stride": 1}, (2, 3, 5)),
    "flatten": ((2, 3, 4), {}, (24,)),
    "relu": ((2, 3, 4), {}, (2, 3, 4)),
    "leaky_relu": ((2, 3, 4), {"slope": 0.1}, (2, 3, 4)),
    "tanh": ((2, 3, 4), {}, (2, 3, 4)),
    "dropout": ((2, 3, 4), {"keep_prob": 0.6}, (2, 3, 4)),
    "batchnorm": ((2, 3, 4), {"momentum": 0.8}, (2, 3, 4)),
    "random_shift": ((2, 4, 5), {"pixels": 1}, (2, 4, 5)),  # training draws: the gradient check's fixed noise
    "random_flip": ((2, 3, 4), {"p": 0.5}, (2, 3, 4)),
}
DEFAULT_CASE = ((2, 4, 5), {}, None)
CLASSES = 3
ROWS = 4


def case(name):
    return CASES.get(name, DEFAULT_CASE)


def shape_keeper(shape) -> dict:
    """A layer with parameters that keeps `shape`, put before the layer under test so that its backward (dx)
    is checked through this layer's weight gradient."""
    if len(shape) == 3:
        return {"type": "conv2d", "filters": shape[0], "size": 1}
    if len(shape) == 2:
        return {"type": "conv1d", "filters": shape[0], "size": 1}
    return {"type": "affine", "units": shape[0]}


def probe(name, before=True, loss="softmax"):
    """(model, theta, X, y, noise): [shape keeper -] layer - affine to 3 classes, float64, random weights."""
    shape, options, _ = case(name)
    layers = ([shape_keeper(shape)] if before else []) + [{"type": name, **options}, {"type": "affine"}]
    model = Sequential(SequentialConfig(layers=layers, input_shape=list(shape), loss=loss))
    model.setup(int(np.prod(shape)), CLASSES, np.float64)
    rng = np.random.default_rng(7)
    theta = model.init_params(rng)
    theta += 0.1 * rng.standard_normal(theta.size)  # nonzero biases and scales: every block matters
    X = rng.standard_normal((ROWS, int(np.prod(shape))))
    y = rng.integers(0, CLASSES, ROWS)
    return model, theta, X, y, model.sample_noise(rng, ROWS)


@pytest.mark.parametrize("name", LAYERS.names())
def test_output_shape(name):
    shape, _, expected = case(name)
    model, *_ = probe(name, before=False)
    layer = model.layers[0]
    assert layer.in_shape == internal_shape(shape)
    if expected is not None:
        assert public_shape(layer.out_shape) == expected
    assert model.plan.sizes[1] == int(np.prod(layer.out_shape))


@pytest.mark.parametrize("name,loss", [(n, "softmax") for n in LAYERS.names()] + [("relu", "svm")])
def test_gradient_check_float64(name, loss):
    """Centered differences on every coordinate of every block (they are small) agree with loss_grad to a
    relative error < 1e-6, except where a max/hinge changes its winner between x-h and x+h (a kink)."""
    model, theta, X, y, noise = probe(name, loss=loss)
    grad = np.zeros_like(theta)
    model.loss_grad(theta, grad, X, y, noise=noise)
    analytic = grad.copy()
    h = 1e-5
    for block in model.layout:
        checked = 0
        for i in range(block.offset, block.stop):
            plus, minus = theta.copy(), theta.copy()
            plus[i] += h
            minus[i] -= h
            if not np.array_equal(model.winners(plus, X, y, noise), model.winners(minus, X, y, noise)):
                continue  # a kink between the two points: the difference quotient is not the derivative
            numeric = (model.loss_grad(plus, grad, X, y, noise=noise) -
                       model.loss_grad(minus, grad, X, y, noise=noise)) / (2 * h)
            a = analytic[i]
            scale = max(abs(a), abs(numeric))
            if scale < 1e-7:  # below the round-off of the difference quotient: compare absolutely
                assert abs(a - numeric) < 1e-9, (block.name, i, a, numeric)
            else:
                assert abs(a - numeric) / scale < 1e-6, (block.name, i, a, numeric)
            checked += 1
        assert checked >= min(block.size, 2), f"{block.name}: every coordinate sat on a kink"


def _reference(name, layer, params, x):
    """Plain-NumPy forward of a built-in layer on x (N, *internal shape) -> (N, *out shape), eval mode."""
    cfg = layer.cfg
    n = x.shape[0]
    if name == "affine":
        return x.reshape(n, -1) @ params["W"] + params["b"]
    if name in ("conv2d", "conv1d"):
        x4 = x if name == "conv2d" else x[:, None]  # (N, H, W, C)
        s, p = cfg.stride, cfg.pad
        pads = ((0, 0), (p, p), (p, p), (0, 0)) if name == "conv2d" else ((0, 0), (0, 0), (p, p), (0, 0))
        xp = np.pad(x4, pads)
        W = params["W"]  # (KH, KW, C, F)
        kh, kw = W.shape[:2]
        ho, wo = (xp.shape[1] - kh) // (s if name == "conv2d" else 1) + 1, (xp.shape[2] - kw) // s + 1
        sh = s if name == "conv2d" else 1
        out = np.zeros((n, ho, wo, W.shape[3]))
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, i * sh:i * sh + kh, j * s:j * s + kw, :]
                out[:, i, j, :] = np.tensordot(patch, W, axes=([1, 2, 3], [0, 1, 2])) + params["b"]
        return out if name == "conv2d" else out[:, 0]
    if name in ("maxpool2d", "maxpool1d", "avgpool"):
        x4 = x if x.ndim == 4 else x[:, None]
        H, W = x4.shape[1:3]
        size = cfg.size or (H if x.ndim == 4 else W)
        kh, kw = (size if x.ndim == 4 else 1), size
        s = cfg.stride or size
        sh = s if x.ndim == 4 else 1
        ho, wo = (H - kh) // sh + 1, (W - kw) // s + 1
        reduce = np.max if name.startswith("max") else np.mean
        out = np.stack([np.stack([reduce(x4[:, i * sh:i * sh + kh, j * s:j * s + kw, :], axis=(1, 2))
                                  for j in range(wo)], axis=1) for i in range(ho)], axis=1)
        return out if x.ndim == 4 else out[:, 0]
    if name == "relu":
        return np.maximum(x, 0)
    if name == "leaky_relu":
        return np.where(x > 0, x, cfg.slope * x)
    if name == "tanh":
        return np.tanh(x)
    if name == "batchnorm":  # eval mode: the running statistics
        return params["gamma"] * (x - params["mean"]) / np.sqrt(params["var"] + cfg.eps) + params["beta"]
    if name in ("flatten", "dropout", "random_shift", "random_flip"):  # the last three: identity in eval mode
        return x.reshape(n, -1) if name == "flatten" else x
    raise KeyError(name)


BUILTIN = sorted(n for n in LAYERS.names() if LAYERS.get(n).module in (builtin.__name__, augment.__name__))


def test_every_builtin_layer_has_a_case():
    assert BUILTIN and set(BUILTIN) <= set(CASES)


@pytest.mark.parametrize("name", BUILTIN)
def test_forward_matches_numpy(name):
    model, theta, X, y, _ = probe(name, before=False)
    layer = model.layers[0]
    n = model._forward(theta, np.ascontiguousarray(X), 0, ROWS)
    got = model.plan.activation(model._work, n, 1).reshape((n, *layer.out_shape))
    params = {s: model.layout.view(theta, f"{s}1") for s, _, _ in layer.blocks()}
    want = _reference(name, layer, params, X.reshape((ROWS, *layer.in_shape)))
    np.testing.assert_allclose(got, want.reshape(got.shape), rtol=1e-12, atol=1e-12)


GUARD, SENTINEL = 5, -777.0


def guarded(array, fill=SENTINEL):
    """(view, base): `array`'s values in the middle of a larger buffer whose ends hold `fill`."""
    flat = np.ravel(array)
    base = np.full(flat.size + 2 * GUARD, fill, dtype=flat.dtype)
    base[GUARD:GUARD + flat.size] = flat
    return base[GUARD:GUARD + flat.size].reshape(np.shape(array)), base


def untouched(base, fill=SENTINEL):
    return np.all(base[:GUARD] == fill) and np.all(base[-GUARD:] == fill)


@pytest.mark.parametrize("name", LAYERS.names())
def test_nan_and_inf_inputs_stay_in_bounds(name):
    """NaN, +-inf and 1e308 inputs through loss_grad, winners and scores: nothing is written outside the
    model's buffers, the gradient or theta, and every recorded max-pool winner indexes its input row."""
    model, theta, X, y, noise = probe(name)
    X = X.copy()
    X.ravel()[::3] = np.nan
    X.ravel()[1::5] = np.inf
    X.ravel()[2::7] = -1e308
    model._reserve(ROWS)
    model._work, work_base = guarded(model._work)
    model._iwork, iwork_base = guarded(model._iwork, -99)
    theta, theta_base = guarded(theta)
    grad, grad_base = guarded(np.zeros_like(theta))
    model.loss_grad(theta, grad, X, y, noise=noise)
    model.winners(theta, X, y, noise)
    assert model.scores(theta, X).shape == (ROWS, CLASSES)
    assert untouched(work_base) and untouched(iwork_base, -99) and untouched(theta_base) and untouched(grad_base)
    for i, layer in enumerate(model.layers):
        if layer.ints_per_row():
            ints = model.plan.ints(model._iwork, ROWS, i)
            assert ints.min() >= 0 and ints.max() < layer.in_size


def test_kernels_ignore_sizes_that_disagree_with_their_arrays():
    """Sizes larger than the arrays (a caller's mistake) make a kernel do nothing, never write past its arrays."""
    x, xb = guarded(np.ones((2, 3 * 4 * 2)))
    cols, cb = guarded(np.zeros((12, 2 * 2 * 2)))
    KC.im2col(x, 0, cols, 5, 4, 2, 2, 2, 1, 1, 0, 0, 4, 3)  # H = 5 > the row's 3
    KC.im2col(x, 2, cols, 3, 4, 2, 2, 2, 1, 1, 0, 0, 2, 3)  # image 2 of 2
    KC.col2im(cols, x, 0, 3, 4, 2, 2, 2, 1, 1, 0, 0, 9, 3)  # Ho = 9 > what fits
    KC.im2col_batch(x, cols[:11], 3, 4, 2, 2, 2, 1, 1, 0, 0, 2, 3)  # 2 images of 6 positions: 12 rows > 11
    KC.col2im_batch(cols[:11], x, 3, 4, 2, 2, 2, 1, 1, 0, 0, 2, 3)
    out, ob = guarded(np.zeros((2, 6 * 2)))
    arg, ab = guarded(np.zeros((2, 6 * 2), dtype=np.int64), -99)
    KP.maxpool_forward(x, out, arg, 3, 4, 2, 2, 2, 1, 1, 3, 3)  # 3 windows of 2 rows need H = 4
    KP.avgpool_forward(x, out, 3, 4, 2, 2, 5, 1, 1, 2, 3)  # KW = 5 > W
    KE.relu_forward(np.ones((3, 9)), out)  # 27 inputs into 24 outputs: the first 24 are written
    arg[...] = [[-1, 10 ** 9] * 6, [24, 23] * 6]  # winners outside the row (24 values) are skipped
    KP.maxpool_backward(out, arg, x)
    db, dbb = guarded(np.zeros(5))
    dW, dWb = guarded(np.zeros((4, 5)))
    KC.split_weight_grad(np.ones((5, 6)), dW, db)  # dW.T with the bias column is (5, 4 + 1), not (5, 6)
    KC.split_weight_rows(np.ones((4, 5)), dW, db)  # 4 weight rows leave no bias row
    KC.im2col_1d_batch(x, cols, 13, 2, 2, 1, 0, 12)  # L = 13 steps of 2 channels > the row's 24 values
    KC.im2col_1d_batch(x, cols[:11], 12, 2, 2, 2, 0, 6)  # 2 signals of 6 windows: 12 rows > 11
    KC.im2col_1d_batch(x, cols, 12, 2, 2, 2, 0, 7)  # Lo = 7 > the 6 windows that fit
    taps, tb = guarded(np.zeros((4, 2)))
    KC.stack_taps(np.ones((3, 2, 2)), taps, 1, 2, 2)  # taps 1 and 3 of a 3-tap kernel
    KC.stack_taps(np.ones((3, 2, 2)), taps, 0, 1, 3)  # 3 taps need (6, 2)
    assert untouched(tb) and np.all(taps == 0)
    assert all(untouched(b) for b in (xb, cb, ob, dbb, dWb)) and untouched(ab, -99)
    assert np.all(cols == 0) and np.all(out == 1) and np.all(db == 0) and np.all(dW == 0)
    assert x[1, 23] == 6.0 and np.count_nonzero(x) == 1  # six windows routed to input 23 of row 1, nothing else


# (H, W, C, KH, KW, SH, SW, PH, PW): padding on both sides, strides, a 1-D signal (H = 1) with a wide kernel
CONV_GEOMETRIES = [(5, 6, 2, 3, 3, 2, 2, 1, 1), (4, 4, 3, 3, 2, 1, 1, 0, 1), (1, 9, 1, 1, 5, 1, 2, 0, 2),
                   (1, 7, 4, 1, 3, 1, 2, 0, 3)]


def _patches(x, H, W, C, KH, KW, SH, SW, PH, PW):
    """Plain-NumPy im2col: (N*Ho*Wo, KH*KW*C) patches of x (N, H*W*C), zero padded, image after image."""
    xp = np.pad(x.reshape(-1, H, W, C), ((0, 0), (PH, PH), (PW, PW), (0, 0)))
    ho, wo = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    rows = [xp[:, i * SH:i * SH + KH, j * SW:j * SW + KW, :].reshape(len(x), -1) for i in range(ho)
            for j in range(wo)]
    return np.stack(rows, axis=1).reshape(len(x) * ho * wo, -1), ho, wo


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_im2col_batch_and_col2im_batch_against_numpy(geometry):
    """im2col_batch equals a NumPy im2col (the column after the patch set to 1); per-image im2col gives the same
    rows; col2im_batch is its adjoint (<im2col x, Y> = <x, col2im Y>) and ignores the ones column."""
    H, W, C, *_ = geometry
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, H * W * C))
    want, ho, wo = _patches(x, *geometry)
    cols = np.full((want.shape[0], want.shape[1] + 1), np.nan)
    KC.im2col_batch(x, cols, *geometry, ho, wo)
    np.testing.assert_array_equal(cols[:, :-1], want)
    assert np.all(cols[:, -1] == 1.0)
    one = np.full((ho * wo, want.shape[1]), np.nan)
    KC.im2col(x, 2, one, *geometry, ho, wo)
    np.testing.assert_array_equal(one, want[2 * ho * wo:])
    Y = rng.standard_normal(cols.shape)
    dx = np.full_like(x, np.nan)
    KC.col2im_batch(Y, dx, *geometry, ho, wo)
    assert abs(np.sum(want * Y[:, :-1]) - np.sum(x * dx)) < 1e-10 * np.abs(want * Y[:, :-1]).sum()
    dx1 = np.full_like(x, np.nan)
    KC.col2im(Y[ho * wo:2 * ho * wo], dx1, 1, *geometry, ho, wo)
    np.testing.assert_array_equal(dx1[1], dx[1])


def test_split_weight_grad_takes_the_bias_from_the_ones_column():
    """dW.T (F, P + 1) = dout.T @ [cols, 1]: dW is the transpose of its first P columns, db the column sums of
    dout (what the GEMM's ones column computes)."""
    rng = np.random.default_rng(4)
    dout, cols = rng.standard_normal((7, 3)), rng.standard_normal((7, 5))
    dWT = dout.T @ np.hstack([cols, np.ones((7, 1))])
    dW, db = np.zeros((5, 3)), np.zeros(3)
    KC.split_weight_grad(dWT, dW, db)
    np.testing.assert_allclose(dW, cols.T @ dout, rtol=1e-12)
    np.testing.assert_allclose(db, dout.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("geometry", [g for g in CONV_GEOMETRIES if g[0] == 1] + [(1, 40, 1, 1, 5, 1, 2, 0, 2),
                                                                         (1, 20, 25, 1, 3, 1, 2, 0, 1)])
@pytest.mark.parametrize("extra", [0, 1, 3])
def test_im2col_1d_batch_equals_the_2d_kernel(geometry, extra):
    """conv1d's own im2col (a copy per window inside the signal) gives the 2-D kernel's columns bit for bit, NaN
    and inf included, for tables of the patch alone, with the ones column, and with zero columns after it."""
    H, W, C, KH, KW, SH, SW, PH, PW = geometry
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, W * C))
    x.ravel()[::7] = np.nan
    x.ravel()[1::11] = -np.inf
    want, ho, wo = _patches(np.nan_to_num(x, nan=0.5, neginf=-2.0), *geometry)
    cols = np.full((want.shape[0], want.shape[1] + extra), np.nan)
    cols2 = cols.copy()
    KC.im2col_1d_batch(x, cols, W, C, KW, SW, PW, wo)
    KC.im2col_batch(x, cols2, *geometry, ho, wo)
    np.testing.assert_array_equal(cols, cols2)
    np.testing.assert_array_equal(np.nan_to_num(cols[:, :want.shape[1]], nan=0.5, neginf=-2.0), want)
    tail = np.zeros(extra)
    tail[:1] = 1.0
    assert np.all(cols[:, want.shape[1]:] == tail)


def test_stack_taps_stacks_a_phase_last_tap_first():
    """Block b of the output is tap first + (count - 1 - b) step of W (K, C, F), transposed to (F, C)."""
    W = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    out = np.zeros((3 * 3, 2))
    KC.stack_taps(W, out, 0, 2, 3)  # taps 4, 2, 0
    np.testing.assert_array_equal(out, np.vstack([W[4].T, W[2].T, W[0].T]))
    KC.stack_taps(W, out[:3], 3, 2, 1)
    np.testing.assert_array_equal(out[:3], W[3].T)


def _conv1d_net(L, C, K, S, pad, F):
    layers = [{"type": "conv1d", "filters": C, "size": 1}, {"type": "conv1d", "filters": F, "size": K, "stride": S,
                                                           "pad": pad}, {"type": "affine"}]
    model = Sequential(SequentialConfig(layers=layers, input_shape=[C, L], loss="softmax"))
    model.setup(C * L, CLASSES, np.float64)
    rng = np.random.default_rng(2)
    theta = model.init_params(rng)
    theta += 0.1 * rng.standard_normal(theta.size)
    X = rng.standard_normal((ROWS + 1, C * L))
    X.ravel()[::7] = 3.0  # plateaus: equal values on both sides of a window's edge
    return model, theta, X, rng.integers(0, CLASSES, ROWS + 1)


# (L, C, K, S, pad, F): cnn1d's second layer, taps that miss a phase (K < S), a kernel longer than 2 S, stride 1
# with 'same' padding, an even kernel, and windows that all cross an edge (no interior position: im2col forward)
IN_PLACE_GEOMETRIES = [(20, 25, 3, 2, 1, 25), (12, 3, 1, 2, 0, 2), (12, 2, 7, 3, 3, 3), (10, 3, 5, 1, 2, 4),
                       (8, 3, 4, 2, 1, 2), (4, 2, 7, 1, 3, 2)]


@pytest.mark.parametrize("geometry", IN_PLACE_GEOMETRIES)
def test_conv1d_in_place_equals_im2col(geometry, monkeypatch):
    """conv1d with L = Lo * stride reads its windows where they are: the forward is bit for bit the im2col
    product's (the skipped padding taps only added zeros), and the loss gradient (dW by output position, dx by
    phases) agrees with im2col and col2im to round-off."""
    L, C, K, S, pad, F = geometry
    model, theta, X, y = _conv1d_net(*geometry)
    source = model.plan.source()
    backward = source.split("def backward")[1].split("def loss_grad")[0]
    assert "gemm_rows(dof" in backward and "col2im" not in backward
    grad = np.zeros_like(theta)
    loss = model.loss_grad(theta, grad, X, y)
    scores = model.scores(theta, X)
    monkeypatch.setattr(builtin, "IN_PLACE", False)
    reference, *_ = _conv1d_net(*geometry)
    assert "gemm_rows(" not in reference.plan.source()
    grad2 = np.zeros_like(theta)
    assert reference.loss_grad(theta, grad2, X, y) == loss
    np.testing.assert_array_equal(reference.scores(theta, X), scores)
    np.testing.assert_allclose(grad, grad2, rtol=1e-12, atol=1e-14)


# (input shape, layers, fused ReLU forwards, fused ReLU backwards): cnn1d (a small-patch im2col GEMM, then windows
# in place and dx by phases), an MLP, a convnet (conv2d's dx is col2im's sums: its ReLU keeps its backward), a ReLU
# with no parameters before it (no backward at all) and a ReLU before dropout (no producer of its dx to gate)
FUSED_RELU_NETS = [
    ((1, 16), [{"type": "conv1d", "filters": 5, "size": 5, "stride": 2, "pad": 2}, "relu",
               {"type": "conv1d", "filters": 4, "size": 3, "stride": 2, "pad": 1}, "relu", "flatten",
               {"type": "affine"}], 2, 2),
    ((12,), [{"type": "affine", "units": 9}, "relu", {"type": "affine", "units": 7}, "relu", {"type": "affine"}], 2, 2),
    ((2, 6, 6), [{"type": "conv2d", "filters": 3, "size": 3, "pad": 1}, "relu", {"type": "maxpool2d"},
                 {"type": "affine", "units": 8}, "relu", {"type": "affine"}], 2, 1),
    ((12,), ["relu", {"type": "affine", "units": 6}, "relu", "dropout", {"type": "affine"}], 1, 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("net", range(len(FUSED_RELU_NETS)))
def test_relu_in_the_stores_equals_the_relu_layer(net, dtype, monkeypatch):
    """A ReLU applied as the layer before it stores its output, and its backward as the layer after it stores
    dx: the step loses the ReLU's own lines, and its loss, scores and gradient are bit for bit those of the step
    with the ReLU's kernels."""
    from framework.layers import step
    shape, layers, forwards, backwards = FUSED_RELU_NETS[net]

    def build():
        model = Sequential(SequentialConfig(layers=layers, input_shape=list(shape), loss="softmax"))
        model.setup(int(np.prod(shape)), CLASSES, dtype)
        return model

    model = build()
    source = model.plan.source()
    forward = source.split("def forward")[1].split("def backward")[0]
    backward = source.split("def backward")[1].split("def loss_grad")[0]
    assert forward.count("+ relu forward") == forwards and backward.count("+ relu backward") == backwards
    relus = [i for i, layer in enumerate(layers) if layer == "relu"]
    assert forward.count("relu_inplace(") == len(relus) - forwards
    rng = np.random.default_rng(6)
    theta = (model.init_params(rng) + 0.1 * rng.standard_normal(model.layout.size)).astype(dtype)
    X = rng.standard_normal((ROWS + 1, int(np.prod(shape)))).astype(dtype)
    y = rng.integers(0, CLASSES, ROWS + 1)
    grad = np.zeros_like(theta)
    loss = model.loss_grad(theta, grad, X, y)
    scores = model.scores(theta, X)
    monkeypatch.setattr(step, "FUSE_RELU", False)
    reference = build()
    assert "+ relu" not in reference.plan.source()
    grad2 = np.zeros_like(theta)
    assert reference.loss_grad(theta, grad2, X, y) == loss
    np.testing.assert_array_equal(reference.scores(theta, X), scores)
    np.testing.assert_array_equal(grad2, grad)
    assert np.count_nonzero(grad) > grad.size // 2


def test_split_weight_rows_takes_the_bias_from_the_ones_row():
    """dWp (8, F) = [cols, 1, 0, 0].T @ dout for a small patch (P = 5): dW is its first P rows, db row P, the zero
    columns' rows ignored."""
    rng = np.random.default_rng(4)
    dout, cols = rng.standard_normal((9, 3)), rng.standard_normal((9, 5))
    dWp = np.hstack([cols, np.ones((9, 1)), np.zeros((9, 2))]).T @ dout
    dW, db = np.zeros((5, 3)), np.zeros(3)
    KC.split_weight_rows(dWp, dW, db)
    np.testing.assert_allclose(dW, cols.T @ dout, rtol=1e-12)
    np.testing.assert_allclose(db, dout.sum(axis=0), rtol=1e-12)


def test_a_small_patch_takes_the_weight_gradient_along_the_filters(monkeypatch):
    """cnn1d's first layer (1 channel, k5: a 5-value patch) keeps 8 columns and computes dW (8, F) = cols.T @ dout;
    its loss and gradient equal the per-image path's (dW.T along the patch) to round-off, and the layer with a
    larger patch keeps P + 1 columns."""
    def build():
        layers = [{"type": "conv1d", "filters": 5, "size": 5, "stride": 2, "pad": 2}, "relu",
                  {"type": "conv1d", "filters": 4, "size": 3, "stride": 2, "pad": 1}, "relu", {"type": "affine"}]
        model = Sequential(SequentialConfig(layers=layers, input_shape=[1, 12], loss="softmax"))
        return model.setup(12, CLASSES, np.float64)

    model = build()
    assert model.layers[0]._width() == builtin.SMALL_PATCH and model.layers[2]._width() == 3 * 5 + 1
    rng = np.random.default_rng(8)
    theta = model.init_params(rng) + 0.1 * rng.standard_normal(model.layout.size)
    X, y = rng.standard_normal((5, 12)), rng.integers(0, CLASSES, 5)
    grad = np.zeros_like(theta)
    loss = model.loss_grad(theta, grad, X, y)
    assert np.all(grad[model.layout["W1"].offset:model.layout["b1"].stop] != 0)
    monkeypatch.setattr(builtin, "BATCHED_COLUMNS", 0)
    per_image = build()
    assert not per_image.layers[0].batched() and per_image.layers[0]._width() == 5 + 1
    want = np.zeros_like(theta)
    assert abs(per_image.loss_grad(theta, want, X, y) - loss) < 1e-12
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("geometry", [(4, 6, 2, 2, 2, 2, 2, 2, 3), (5, 7, 3, 2, 2, 2, 2, 2, 3),
                                      (1, 9, 2, 1, 3, 1, 3, 1, 3)])
def test_tiled_maxpool_backward_equals_the_scatter(geometry):
    """Windows that tile the input (stride = size; a row and a column left over in the second case): the one-write
    backward gives the scatter's values bit for bit, -0.0 and NaN gradients included, and zeros the rest (an
    extra row of dx included)."""
    H, W, C, KH, KW, SH, SW, Ho, Wo = geometry
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, H * W * C))
    x[0, 1] = np.nan
    out, arg = np.zeros((3, Ho * Wo * C)), np.zeros((3, Ho * Wo * C), dtype=np.int64)
    KP.maxpool_forward(x, out, arg, *geometry)
    dout = rng.standard_normal(out.shape)
    dout[1, :3] = -0.0
    dout[2, 0] = np.nan
    want, got = np.full((4, H * W * C), 7.0), np.full((4, H * W * C), 7.0)
    KP.maxpool_backward(dout, arg, want)
    KP.maxpool_backward_tiled(dout, arg, got, *geometry)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want)) and np.count_nonzero(got) == np.count_nonzero(want)


def test_maxpool_winners_change_only_across_a_tie():
    model, theta, X, y, _ = probe("maxpool2d", before=False)
    w = model.winners(theta, X, y)
    X2 = X.copy()
    X2[0, 0] += 1e-9  # tiny moves keep every window's winner
    assert np.array_equal(w, model.winners(theta, X2, y))
    losers = sorted(set(range(X.shape[1])) - set(w[:model.layers[0].out_size]))
    X2[0, losers[0]] = X[0].max() + 1  # an input that lost its window now wins it
    assert not np.array_equal(w, model.winners(theta, X2, y))


@pytest.mark.slow  # the float32 build of the GEMM tiles takes ~40 s on a cold Numba cache
def test_float32_matches_float64():
    model, theta, X, y, _ = probe("conv2d")
    m32 = model.with_dtype(np.float32)
    g64, g32 = np.zeros_like(theta), np.zeros(theta.size, np.float32)
    l64 = model.loss_grad(theta, g64, X, y)
    l32 = m32.loss_grad(theta.astype(np.float32), g32, X.astype(np.float32), y)
    assert abs(l64 - l32) < 1e-5 and np.allclose(g32, g64, atol=1e-5)


def test_shape_inference_and_layout_of_the_convnet():
    model = MODELS.build("convnet").setup(3072, 10)
    assert model.input_shape == (32, 32, 3)
    assert [public_shape(layer.out_shape) for layer in model.layers] == \
        [(32, 32, 32), (32, 32, 32), (32, 16, 16), (100,), (100,), (10,)]
    assert [(b.name, b.shape, b.decay) for b in model.layout] == [
        ("W1", (7, 7, 3, 32), True), ("b1", (32,), False), ("W2", (8192, 100), True), ("b2", (100,), False),
        ("W3", (100, 10), True), ("b3", (10,), False)]
    cnn = MODELS.build("cnn1d", input_shape=[1, 40]).setup(40, 10)
    assert [public_shape(layer.out_shape) for layer in cnn.layers][::2] == [(25, 20), (25, 10), (25, 5), (125,)]
    assert cnn.layers[-1].out_shape == (10,)


@pytest.mark.parametrize("layers,input_shape,key,piece", [
    ([{"type": "conv3d"}, {"type": "affine"}], [], "model.layers[0].type", "conv2d"),
    ([{"type": "conv2d", "filtres": 3}, {"type": "affine"}], [], "model.layers[0].filtres", "filters"),
    (["conv1d", {"type": "affine"}], [1, 8, 8], "model.layers[0]", "(C, L) signals"),
    ([{"type": "conv2d", "size": 9}, {"type": "affine"}], [], "model.layers[0].size", "kernel no larger"),
    ([{"type": "affine", "units": 5}], [], "model.layers", "10 class scores"),
    ([{"type": "affine"}], [3, 5], "model.input_shape", "64 values"),
    ([], [], "model.layers", "non-empty list"),
])
def test_bad_layer_lists_name_the_key(layers, input_shape, key, piece):
    with pytest.raises(ConfigError) as info:
        MODELS.build("sequential", layers=layers, input_shape=input_shape).setup(64, 10)
    assert info.value.key == key and piece in str(info.value)


@pytest.mark.slow
def test_bad_layer_through_the_cli(cli):
    result = cli(*FAST, "model=sequential", "model.layers=[{type:conv3d},{type:affine}]")
    assert_clean_failure(result, ["model.layers[0].type", "conv2d"])
    assert result.returncode == 2


def _summary(run_dir: pathlib.Path) -> dict:
    (path,) = run_dir.glob("outputs/runs/*/*/summary.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_convnet_trains_on_digits_through_the_cli(cli, tmp_path):
    result = cli(*FAST, "model=convnet", "data=digits", "epochs=8")
    assert result.returncode == 0, result.stderr
    metrics = _summary(tmp_path)["metrics"]
    assert metrics["test_acc"] >= 0.97, metrics  # the MLP default gets ~0.97; chance is 0.1


@pytest.mark.slow
def test_cnn1d_trains_through_the_cli(cli, tmp_path):
    result = cli(*FAST, "model=cnn1d", "data=digits", "epochs=8")  # rows of pixels as one 64-step signal
    assert result.returncode == 0, result.stderr
    assert _summary(tmp_path)["metrics"]["test_acc"] >= 0.85


@pytest.mark.slow
def test_user_layer_plugin_trains_and_passes_the_gradient_check_through_the_cli(cli, tmp_path):
    (tmp_path / "plugins").mkdir()
    shutil.copy(PLUGIN_DIR / "channel_scale.py", tmp_path / "plugins" / "channel_scale.py")
    layers = "[{type:conv2d,filters:6,size:3,pad:1},{type:channel_scale,start:0.5},relu,{type:maxpool2d},{type:affine}]"
    result = cli("preflight=full", "++tensorboard.enabled=false", "checkpoint=null", "model=sequential",
                 f"model.layers={layers}", "epochs=8")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert "Gradient check: PASSED" in text and "s2 " in text, text  # the plugin's block was checked
    assert _summary(tmp_path)["metrics"]["test_acc"] >= 0.8  # chance is 0.1


def test_framework_list_shows_every_layer_and_a_plugin_layer(cli, tmp_path):
    """framework.list has a layer section saying how to write a layer list, with every built-in and a user's
    layer from the working directory's plugins/ folder, each with its options."""
    (tmp_path / "plugins").mkdir()
    shutil.copy(PLUGIN_DIR / "channel_scale.py", tmp_path / "plugins" / "channel_scale.py")
    result = cli("kind=layer", "options=true", module="framework.list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("layer (items of a layer list: python -m framework model=sequential 'model.layers=[")
    listed = [line.split()[0] for line in lines[1:] if line.startswith("  ") and not line.startswith("      ")]
    assert listed == LAYERS.names()  # the plugin is loaded here too, so channel_scale is among them
    assert "channel_scale" in listed
    assert "      start = 1.0: initial scale of every channel (a value in (0, inf))" in lines
    assert "      pad = 0: zeros added on each side (K // 2 with stride 1 keeps the size) (a value in [0, inf))" in lines


def test_layered_model_with_dropout_resumes_bit_identical(tmp_path):
    """Checkpoints carry the layer list in the saved config: a run cut mid-epoch and resumed from its file ends
    bit-identical to the uninterrupted one (dropout masks come from the saved RNG streams, batchnorm's running
    statistics are blocks of theta)."""
    from omegaconf import OmegaConf
    from test_checkpoint import check_exact_resume

    from conftest import FAST_BASE, compose_config

    layers = ("[{type:conv2d,filters:4,size:3,pad:1},batchnorm,relu,{type:maxpool2d},{type:dropout,keep_prob:0.8},"
              "{type:affine}]")
    cfg = compose_config(*FAST_BASE, "data=digits", "model=sequential", "data.max_train=96", "batch_size=16",
                         "epochs=3", f"model.layers={layers}")
    OmegaConf.set_struct(cfg, False)
    read = check_exact_resume(tmp_path, cfg)
    assert read["theta"].size == 4 * 9 + 4 + 4 * 4 + 64 * 10 + 10


@pytest.mark.parametrize("name", ["conv2d", "conv1d"])
def test_per_image_convolution_equals_the_batched_one(name, monkeypatch):
    """Large images take the per-image path (columns recomputed in backward): same loss and gradient as the
    whole-batch path the gradient check covers, to round-off."""
    model, theta, X, y, _ = probe(name)
    assert model.layers[1].batched()
    grad = np.zeros_like(theta)
    loss = model.loss_grad(theta, grad, X, y)
    monkeypatch.setattr(builtin, "BATCHED_COLUMNS", 0)
    per_image, *_ = probe(name)
    assert not per_image.layers[1].batched()
    grad2 = np.zeros_like(theta)
    assert abs(per_image.loss_grad(theta, grad2, X, y) - loss) < 1e-12
    np.testing.assert_allclose(grad2, grad, rtol=1e-10, atol=1e-13)


def test_batchnorm_running_statistics_follow_training_and_serve_eval():
    model, theta, X, y, _ = probe("batchnorm", before=False)
    mean, var = model.layout.view(theta, "mean1"), model.layout.view(theta, "var1")
    mean[:], var[:] = 0.0, 1.0
    grad = np.zeros_like(theta)
    scores_before = model.scores(theta, X)
    model.loss_grad(theta, grad, X, y)  # a training forward: batch statistics, running ones move 20% towards them
    x = X.reshape(ROWS, -1, 2)  # channels last: (N, positions, C)
    np.testing.assert_allclose(mean, 0.2 * x.mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(var, 0.8 + 0.2 * x.var(axis=(0, 1)), rtol=1e-12)
    assert np.all(grad[model.layout["mean1"].offset:model.layout["var1"].stop] == 0)  # no optimizer moves them
    assert not np.allclose(model.scores(theta, X), scores_before)  # eval reads them


def test_eval_in_chunks_equals_one_pass(monkeypatch):
    """Wide models evaluate in chunks of rows (bounded scratch): the same scores and activations bit for bit."""
    from framework.layers import sequential

    model, theta, X, y, _ = probe("relu")
    X = np.concatenate([X] * 3)
    scores, acts = model.scores(theta, X), model.activations(theta, X)
    monkeypatch.setattr(sequential, "EVAL_FLOATS", model.plan.row_floats * 5)
    assert model.eval_chunk() == 5
    np.testing.assert_array_equal(model.scores(theta, X), scores)
    chunked = model.activations(theta, X)
    assert list(acts) == ["layer2_relu"] and acts["layer2_relu"].shape[0] == 3 * ROWS
    assert chunked.keys() == acts.keys() and all(np.array_equal(chunked[k], acts[k]) for k in acts)
