"""The `mlp`, `softmax` and `svm` presets are layer lists on the generated step: their loss, gradient, scores,
initial weights and dropout masks equal an independent NumPy MLP written here (CS231n style, float64), and the
Python-driven wide step equals the one-kernel step bit for bit."""
import numpy as np
import pytest

import framework
from framework.engine import threads
from framework.layers import sequential as seq_module
from plugins.models import MLP


def build(name="mlp", D=6, C=3, **options):
    return framework.MODELS.build(name, **options).setup(D, C)


def softmax_ref(s, y):
    n = len(y)
    z = s - s.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    value = -np.mean(np.log(p[np.arange(n), y]))
    d = p.copy()
    d[np.arange(n), y] -= 1
    return value, d / n


def svm_ref(s, y):
    n = len(y)
    margins = s - s[np.arange(n), y][:, None] + 1.0
    margins[np.arange(n), y] = 0
    value = np.maximum(margins, 0).sum() / n
    d = (margins > 0) * 1.0
    d[np.arange(n), y] = -d.sum(axis=1)
    return value, d / n


ACTS = {"relu": (lambda z, s: np.maximum(z, 0), lambda z, s: (z > 0) * 1.0),
        "leaky_relu": (lambda z, s: np.where(z > 0, z, s * z), lambda z, s: np.where(z > 0, 1.0, s)),
        "tanh": (lambda z, s: np.tanh(z), lambda z, s: 1 - np.tanh(z) ** 2)}


def mlp_ref(theta, X, y, sizes, act, slope, masks, loss):
    """Plain NumPy MLP: W1 (D, H1), b1, ..., WL, bL packed in theta in that order; masks: one (N, H_l) array per
    hidden layer (inverted dropout, 1/p or 0) or None. Returns (mean loss, flat gradient, scores)."""
    f, df = ACTS[act]
    params, p = [], 0
    for i in range(len(sizes) - 1):
        W = theta[p:p + sizes[i] * sizes[i + 1]].reshape(sizes[i], sizes[i + 1])
        p += W.size
        b = theta[p:p + sizes[i + 1]]
        p += b.size
        params.append((W, b))
    hs, zs = [X], []
    for i, (W, b) in enumerate(params[:-1]):
        z = hs[-1] @ W + b
        zs.append(z)
        a = f(z, slope)
        hs.append(a * masks[i] if masks else a)
    scores = hs[-1] @ params[-1][0] + params[-1][1]
    value, d = (softmax_ref if loss == "softmax" else svm_ref)(scores, y)
    grads = []
    for i in range(len(params) - 1, -1, -1):
        W, b = params[i]
        grads.append((hs[i].T @ d, d.sum(axis=0)))
        if i > 0:
            dh = d @ W.T
            if masks:
                dh = dh * masks[i - 1]
            d = dh * df(zs[i - 1], slope)
    flat = np.concatenate([np.concatenate([dW.ravel(), db]) for dW, db in reversed(grads)])
    return value, flat, scores


@pytest.mark.parametrize("act, loss, keep_prob, hidden", [
    ("relu", "softmax", 1.0, [5, 4]), ("relu", "svm", 0.7, [5, 4]), ("leaky_relu", "softmax", 0.7, [5, 4]),
    ("leaky_relu", "svm", 1.0, [5]), ("tanh", "softmax", 1.0, [5, 4]), ("tanh", "svm", 0.7, [5, 4]),
    ("relu", "softmax", 1.0, []), ("relu", "svm", 1.0, []),
])
def test_layered_mlp_equals_a_numpy_mlp(act, loss, keep_prob, hidden):
    rng = np.random.default_rng(3)
    model = build(hidden_sizes=hidden, activation=act, leaky_slope=0.1, keep_prob=keep_prob, loss=loss)
    sizes = [6, *hidden, 3]
    theta = rng.standard_normal(model.layout.size) * 0.5
    X, y = rng.standard_normal((20, 6)), rng.integers(0, 3, 20)
    idx = rng.permutation(20)[:8].astype(np.int64)
    noise = model.sample_noise(np.random.default_rng(5), 8)
    masks = None
    if keep_prob < 1:  # the masks the model drew: one uniform draw per hidden unit and row, layer after layer
        u = np.random.default_rng(5).random(8 * sum(hidden))
        masks, pos = [], 0
        for h in hidden:
            masks.append((u[pos:pos + 8 * h].reshape(8, h) < keep_prob) / keep_prob)
            pos += 8 * h
        np.testing.assert_array_equal(noise, np.concatenate([m.ravel() for m in masks]))
    grad = np.full(model.layout.size, np.nan)
    value = model.loss_grad(theta, grad, X, y, idx, noise)
    ref_value, ref_grad, _ = mlp_ref(theta, X[idx], y[idx], sizes, act, 0.1, masks, loss)
    assert value == pytest.approx(ref_value, rel=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
    _, _, ref_scores = mlp_ref(theta, X, y, sizes, act, 0.1, None, loss)  # eval mode: no dropout
    np.testing.assert_allclose(model.scores(theta, X), ref_scores, rtol=1e-12, atol=1e-14)
    assert model.loss_kind == loss and model.activation_kind == (act if hidden else None)


@pytest.mark.parametrize("name, options, small_std", [
    ("mlp", {"hidden_sizes": [7, 5], "init": "he", "init_scale": 1.5}, 0.01),
    ("mlp", {"hidden_sizes": [7], "init": "xavier"}, 0.01),
    ("mlp", {"hidden_sizes": [4], "init": "small", "init_scale": 3.0}, 0.01),
    ("softmax", {}, 0.001),
    ("svm", {"init": "he"}, 0.001),
])
@pytest.mark.parametrize("small", [False, True])
def test_layout_and_initial_weights_are_those_of_an_mlp(name, options, small_std, small):
    """Blocks W1, b1, ..., WL, bL in that order; each W one standard_normal draw of its size times the init's
    std (small: small_std * init_scale; the chance-loss check's small=True: small_std), biases 0."""
    model = build(name, D=9, C=4, **options)
    sizes = [9, *options.get("hidden_sizes", []), 4]
    want = []
    for i in range(len(sizes) - 1):
        want += [(f"W{i + 1}", (sizes[i], sizes[i + 1])), (f"b{i + 1}", (sizes[i + 1],))]
    assert [(b.name, tuple(b.shape)) for b in model.layout] == want
    theta = model.init_params(np.random.default_rng(11), small=small)
    rng = np.random.default_rng(11)
    init = options.get("init", "small" if name != "mlp" else "he")
    scale = options.get("init_scale", 1.0)
    for i in range(len(sizes) - 1):
        fan_in = sizes[i]
        if small:
            std = small_std
        elif init == "small":
            std = small_std * scale
        else:
            std = scale * np.sqrt((2.0 if init == "he" else 1.0) / fan_in)
        expected = rng.standard_normal(fan_in * sizes[i + 1]) * std
        np.testing.assert_array_equal(model.layout.view(theta, f"W{i + 1}").ravel(), expected)
        assert not model.layout.view(theta, f"b{i + 1}").any()


@pytest.mark.parametrize("overrides, dtype", [({}, np.float64), ({"activation": "tanh", "loss": "svm"}, np.float32),
                                             ({"activation": "leaky_relu"}, np.float64)])
def test_wide_step_equals_the_one_kernel_step_bit_for_bit(monkeypatch, overrides, dtype):
    """The Python-driven step (GEMMs split over threads) makes the same calls as the generated kernel."""
    monkeypatch.setenv("FRAMEWORK_GEMM", "own")
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    model = framework.MODELS.build("mlp", hidden_sizes=[40, 24], **overrides).setup(30, 5, dtype)
    rng = np.random.default_rng(0)
    theta = model.init_params(rng)
    X, y = rng.standard_normal((50, 30)).astype(dtype), rng.integers(0, 5, 50)
    idx = np.arange(7, 44, dtype=np.int64)
    g1, g2 = np.empty_like(theta), np.empty_like(theta)
    one = model.loss_grad(theta, g1, X, y, idx)
    assert model._wide(idx.size) == 0  # small: the one-kernel step
    monkeypatch.setattr(seq_module, "WIDE_MIN_WORK", 0)
    monkeypatch.setattr(threads, "threads", lambda: 3)
    assert model.step_threads(idx.size) == 3 and model.fused_loss(idx.size) is None
    wide = model.loss_grad(theta, g2, X, y, idx)
    assert wide == one
    np.testing.assert_array_equal(g1, g2)


def test_presets_are_layered_models_with_the_mlp_monitoring_names():
    model = build(hidden_sizes=[5, 4], activation="tanh", keep_prob=0.5)
    assert isinstance(model, MLP) and [layer.name for layer in model.layers] == \
        ["affine", "tanh", "dropout", "affine", "tanh", "dropout", "affine"]
    theta = model.init_params(np.random.default_rng(0))
    X = np.random.default_rng(1).standard_normal((9, 6))
    acts = model.activations(theta, X)
    assert list(acts) == ["layer1", "layer2"] and acts["layer2"].shape == (9, 4)
    W1, b1 = model.layout.view(theta, "W1"), model.layout.view(theta, "b1")
    np.testing.assert_allclose(acts["layer1"], np.tanh(X @ W1 + b1), rtol=1e-12)
    assert model.activation_units() == {"layer1": ("tanh", 0), "layer2": ("tanh", 0)}
    assert model.first_filters(theta) is None  # the first_layer image, as for any MLP


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_diverged_mlp_step_reads_as_not_finite(value):
    """NaN/inf weights or inputs (a diverged run) give a non-finite loss, never a crash or a finite number."""
    model = build(hidden_sizes=[5], activation="leaky_relu", keep_prob=0.5)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((9, 6)), rng.integers(0, 3, 9)
    theta = model.init_params(rng)
    theta[3] = value
    grad = np.empty_like(theta)
    noise = model.sample_noise(rng, 9)
    assert not np.isfinite(model.loss_grad(theta, grad, X, y, None, noise))
    X[2, 1] = value
    assert not np.isfinite(model.loss_grad(model.init_params(rng), grad, X, y))


def test_distillation_is_part_of_the_model_interface():
    from framework.components.model import Model

    assert build().can_distill() and build("svm").can_distill()
    assert not Model(None).can_distill()


def test_one_compiled_step_serves_every_width_of_the_same_layer_types():
    """The generated source names sizes only through its `c` argument: MLPs of other widths (and inputs, classes)
    share one module text, hence one compile, and still compute their own numbers (checked against NumPy)."""
    a, b = build(D=6, C=3, hidden_sizes=[5]), build(D=9, C=4, hidden_sizes=[7])
    assert a.plan.source() == b.plan.source()
    assert not np.array_equal(a.dims, b.dims)
    assert build(hidden_sizes=[5, 5]).plan.source() != a.plan.source()  # another depth is another step
    rng = np.random.default_rng(3)
    for model, D, C in ((a, 6, 3), (b, 9, 4)):
        theta = model.init_params(rng)
        X, y = rng.standard_normal((8, D)), rng.integers(0, C, 8)
        W1, b1 = model.layout.view(theta, "W1"), model.layout.view(theta, "b1")
        W2, b2 = model.layout.view(theta, "W2"), model.layout.view(theta, "b2")
        expected, _ = softmax_ref(np.maximum(X @ W1 + b1, 0) @ W2 + b2, y)
        grad = np.empty_like(theta)
        assert model.loss_grad(theta, grad, X, y) == pytest.approx(expected, rel=1e-12)
