"""Gradient check (notes section 1): wrong gradients are caught and named by block, correct ones pass even at
kinks, in float64 for float32 models, with fixed dropout noise; the notes' tips are options that work."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from framework import MODELS, REGULARIZERS, ConfigError, OPTIMIZERS, Regularizer, RegularizerConfig
from framework.checks.gradcheck import check_gradients
from framework.checks.gradcheck_report import make_options, relative_error

from user_models import NumpySoftmax

D, C = 12, 5  # features, classes of the synthetic data


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)), rng.integers(0, C, n).astype(np.int64)


# --- models a user would write: plain NumPy Model subclasses ----------------------------------------------------
class NumpySVM(NumpySoftmax):
    """Linear multiclass SVM with winner records (notes 1.5). `forget_indicator=True` is the classic bug of
    leaving out the [margin > 0] factor in the backward: invisible while every margin is active."""

    loss_kind = "svm"

    def __init__(self, forget_indicator=False):
        super().__init__()
        self.forget_indicator = forget_indicator

    def init_params(self, rng, small=False):
        theta = np.zeros(self.layout.size, dtype=self.dtype)
        self.layout.view(theta, "W")[:] = rng.standard_normal(self.layout["W"].shape) * 0.001
        return theta

    def _margins(self, theta, X, y):
        s = self.scores(theta, X)
        return s - s[np.arange(len(y)), y][:, None] + 1.0

    def loss_grad(self, theta, grad, X, y, idx=None, noise=None):
        if idx is not None:
            X, y = X[idx], y[idx]
        n = len(y)
        m = self._margins(theta, X, y)
        m[np.arange(n), y] = 0.0
        loss = np.maximum(m, 0).sum() / n
        active = np.ones_like(m) if self.forget_indicator else (m > 0).astype(float)
        active[np.arange(n), y] = 0.0
        dscores = active
        dscores[np.arange(n), y] = -active.sum(axis=1)
        dscores /= n
        self.layout.view(grad, "W")[:] = X.T @ dscores
        self.layout.view(grad, "b")[:] = dscores.sum(axis=0)
        return float(loss)

    def winners(self, theta, X, y, noise=None):
        return (self._margins(theta, X, y) > 0).ravel()


@dataclass
class WrongL2Config(RegularizerConfig):
    reg: float = 1e-4


class WrongL2(Regularizer):
    """Penalty 0.5 * reg * sum W^2 but gradient 1.5 * reg * W: a wrong regularization gradient."""

    @property
    def active(self):
        return self.cfg.reg > 0

    def penalty_grad(self, theta, grad, mask):
        grad += 1.5 * self.cfg.reg * theta * mask
        return 0.5 * self.cfg.reg * float(np.sum(mask * theta ** 2))


def setup_user_model(model, seed=1):
    model.setup(D, C)
    return model, model.init_params(np.random.default_rng(seed))


# --- wrong gradients are caught and named ------------------------------------------------------------------------
def test_correct_numpy_model_passes_with_good_errors():
    X, y = data()
    model, theta = setup_user_model(NumpySoftmax())
    report = check_gradients(model, theta, X, y)
    assert report.passed, str(report)
    assert report.kink_detection.startswith("unavailable")  # the user model records no winners
    data_part = report.part("data")
    assert data_part.tolerance == 1e-6  # kink-free softmax: stricter than 1e-4 (notes 1.2)
    for block in data_part.blocks:
        assert block.worst_error < 1e-7, (block.name, block.worst_error)  # notes: < 1e-7 is good


@pytest.mark.parametrize("wrong, block, other", [(dict(bias_factor=1.5), "b", "W"),
                                                 (dict(weight_factor=1.5), "W", "b")])
def test_wrong_block_gradient_is_caught_and_named(wrong, block, other):
    X, y = data()
    model, theta = setup_user_model(NumpySoftmax(**wrong))
    report = check_gradients(model, theta, X, y)
    assert not report.passed
    failures = report.failures()
    assert [(p, b) for p, b, _ in failures] == [("data", block)]
    # a gradient 1.5x too large has relative error |1.5 - 1| / 1.5 = 1/3
    assert failures[0][2] == pytest.approx(1 / 3, rel=1e-4)
    blocks = {b.name: b for b in report.part("data").blocks}
    assert blocks[other].passed and blocks[other].worst_error < 1e-7
    table = str(report)
    assert "FAILED" in table
    row = next(line for line in table.splitlines() if line.strip().startswith(block + " "))
    assert "FAIL" in row and "wrong" in row


def test_wrong_l2_gradient_found_by_the_regularization_only_check():
    X, y = data()
    model, theta = setup_user_model(NumpySoftmax())
    reg_strength = 1e-7  # small next to the data gradient, as typical reg often is (notes 1.9)
    reg = WrongL2(WrongL2Config(reg=reg_strength))
    mask = model.layout.decay_mask()
    report = check_gradients(model, theta, X, y, reg, mask)
    assert not report.passed
    assert [(p, b) for p, b, _ in report.failures()] == [("reg", "W")]
    assert report.failures()[0][2] == pytest.approx(1 / 3, rel=1e-4)
    assert report.part("data").passed
    reg_blocks = {b.name: b for b in report.part("reg").blocks}
    assert reg_blocks["b"].passed  # masked out: both gradients exactly zero (notes 1.2: passes)
    assert "regularization alone, strength 1" in str(report)

    # The same bug through the combined data + reg objective at the run's strength: the reg term is too small
    # to move the relative error past the default tolerance, so the combined check alone misses it.
    combined = check_gradients(model, theta, X, y, reg, mask, parts=["total"])
    assert combined.passed, str(combined)
    assert 0 < combined.worst()[2] < combined.part("total").tolerance
    # ...while the correct L2 of the registry passes the regularization-only check
    l2 = REGULARIZERS.build("l2", reg=reg_strength)
    assert check_gradients(model, theta, X, y, l2, l2.mask(model.layout)).passed


def test_regularizer_none_is_skipped_not_passed_silently():
    X, y = data()
    model, theta = setup_user_model(NumpySoftmax())
    none = REGULARIZERS.build("none")
    report = check_gradients(model, theta, X, y, none, none.mask(model.layout))
    assert report.part("reg").skipped and "no penalty" in report.part("reg").skipped
    assert report.passed


# --- kinks (1.5) ---------------------------------------------------------------------------------------------------
def _at_kinks_mlp(rng, X):
    """A ReLU MLP whose hidden pre-activations on X's rows sit at +-1e-9 for half of the units."""
    H = 8
    model = MODELS.build("mlp", hidden_sizes=[H], activation="relu").setup(D, C)
    theta = model.init_params(rng)
    v = model.layout.views(theta)
    target = rng.choice([-1e-9, 1e-9], size=(len(X), H))
    target[:, H // 2:] = rng.uniform(0.5, 1.5, size=(len(X), H - H // 2))
    v["b1"][:] = rng.standard_normal(H) * 0.1
    v["W1"][:] = np.linalg.lstsq(X, target - v["b1"], rcond=None)[0]
    assert np.abs(X @ v["W1"] + v["b1"])[:, :H // 2].max() < 2e-9
    return model, theta


def _at_kinks_svm(rng, X, y):
    """The linear SVM with every margin s_j - s_y + 1 of X's rows at +-1e-9."""
    model = MODELS.build("svm").setup(D, C)
    theta = model.init_params(rng)
    v = model.layout.views(theta)
    S = -1.0 + rng.choice([-1e-9, 1e-9], size=(len(X), C))
    S[np.arange(len(X)), y] = 0.0
    v["b1"][:] = rng.standard_normal(C) * 0.01
    v["W1"][:] = np.linalg.lstsq(X, S - v["b1"], rcond=None)[0]
    return model, theta


@pytest.mark.parametrize("kind", ["relu_mlp", "svm"])
def test_correct_models_at_kinks_pass_and_count_the_kinks(kind):
    rng = np.random.default_rng(3)
    X, y = data(3, seed=4)
    model, theta = _at_kinks_mlp(rng, X) if kind == "relu_mlp" else _at_kinks_svm(rng, X, y)
    report = check_gradients(model, theta, X, y, points=3)
    assert report.passed, str(report)
    assert report.kink_detection.startswith("on")
    assert report.kinks_crossed >= 5
    assert report.part("data").tolerance == 1e-4  # objective with kinks (notes 1.2)
    assert "kink crossed" in str(report)
    # Without kink detection the same correct gradients look wrong: the kinks really are crossed.
    blind = check_gradients(model, theta, X, y, points=3, kinks=False)
    assert not blind.passed
    assert max(e for _, _, e in blind.failures()) > 1e-2


def test_smooth_builtin_model_reports_kink_free_and_strict_tolerance():
    X, y = data()
    model = MODELS.build("mlp", hidden_sizes=[7], activation="tanh").setup(D, C)
    report = check_gradients(model, model.init_params(np.random.default_rng(0)), X, y)
    assert report.passed, str(report)
    assert "kink-free" in report.kink_detection and report.part("data").tolerance == 1e-6
    assert report.kinks_crossed == 0


# --- float64 always (1.3) -------------------------------------------------------------------------------------------
def test_float32_model_passes_because_the_check_runs_in_float64():
    rng = np.random.default_rng(5)
    X, y = data(3, seed=6)
    model32 = MODELS.build("mlp", hidden_sizes=[16], activation="tanh").setup(D, C, np.float32)
    theta32 = model32.init_params(rng).astype(np.float32)
    report = check_gradients(model32, theta32, X, y, points=3, coords_per_block=10)
    assert report.passed, str(report)
    assert report.settings["model_dtype"] == "float32" and report.settings["check_dtype"] == "float64"
    assert report.worst()[2] < 1e-6
    assert model32.dtype == np.float32  # the caller's model is not changed

    # The same centered difference computed in float32 on the same coordinates is useless (notes 1.3).
    X32 = X.astype(np.float32)
    grad = np.empty_like(theta32)
    model32.loss_grad(theta32, grad, X32, y)
    scratch = np.empty_like(theta32)
    errors = []
    for block in report.part("data").blocks:
        for c in block.coords:
            t = theta32.copy()
            t[c.flat] = theta32[c.flat] + np.float32(1e-5)
            up = model32.loss_grad(t, scratch, X32, y)
            t[c.flat] = theta32[c.flat] - np.float32(1e-5)
            down = model32.loss_grad(t, scratch, X32, y)
            errors.append(relative_error(float(grad[c.flat]), float((up - down) / np.float32(2e-5))))
    assert max(errors) > 1e-2  # float32 shows 1e-2-size errors on a correct gradient
    assert max(errors) > 1e3 * report.worst()[2]


# --- dropout with a fixed seed (1.10) ----------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_dropout_passes_with_fixed_noise_and_fails_when_redrawn(activation):
    X, y = data(3, seed=7)
    model = MODELS.build("mlp", hidden_sizes=[16], activation=activation, keep_prob=0.5).setup(D, C)
    theta = model.init_params(np.random.default_rng(8))
    fixed = check_gradients(model, theta, X, y, points=3, seed=1)
    assert fixed.passed, str(fixed)
    assert any("notes 1.10" in n for n in fixed.notes)
    redrawn = check_gradients(model, theta, X, y, points=3, seed=1, fixed_noise=False)
    assert not redrawn.passed
    assert max(e for _, _, e in redrawn.failures()) > 1e-2


# --- every block is sampled (1.11), few datapoints (1.6) ---------------------------------------------------------
def test_every_block_is_sampled_and_small_blocks_entirely():
    X, y = data()
    model = MODELS.build("mlp", hidden_sizes=[20, 6]).setup(D, C)
    theta = model.init_params(np.random.default_rng(0))
    report = check_gradients(model, theta, X, y, coords_per_block=7, points=2)
    blocks = {b.name: b for b in report.part("data").blocks}
    assert list(blocks) == model.layout.names  # W1 b1 W2 b2 W3 b3: biases included
    for b in model.layout:
        coords = blocks[b.name].coords
        assert len(coords) == min(7, b.size)
        assert len({c.flat for c in coords}) == len(coords)
        assert all(b.offset <= c.flat < b.stop for c in coords)
    assert report.settings["points"] == 2


# --- step size and retries (1.7), tiny values (1.4) ----------------------------------------------------------------
def test_failing_step_is_retried_and_the_best_reported():
    # Inputs x1000 and weights /1000 keep the scores but make the loss 1e6 times more curved in W: the O(h^2)
    # error of h = 1e-5 fails the kink-free tolerance, a smaller step passes (notes 1.7).
    X, y = data()
    X = X * 1000.0
    model, theta = setup_user_model(NumpySoftmax())
    model.layout.view(theta, "W")[:] /= 1000.0
    report = check_gradients(model, theta, X, y, points=3)
    assert report.passed, str(report)
    retried = [c for b in report.part("data").blocks for c in b.coords if c.h != 1e-5]
    assert retried and all(c.h < 1e-5 and len(c.attempts) >= 2 for c in retried)
    assert all(c.attempts[0].error > 1e-6 >= c.error for c in retried)
    single = check_gradients(model, theta, X, y, points=3, retry_h=[])
    assert not single.passed and single.failures()[0][1] == "W"
    assert 1e-6 < single.worst()[2] < 1e-3  # truncation error, not a wrong gradient


def test_tiny_gradients_are_flagged_and_loss_scale_fixes_them():
    X, y = data()
    model, theta = setup_user_model(NumpySoftmax(loss_factor=1e-12))
    report = check_gradients(model, theta, X, y)
    assert any("loss_scale" in w and "1.4" in w for w in report.warnings)
    scaled = check_gradients(model, theta, X, y, loss_scale=1e12)
    assert scaled.passed and not scaled.warnings
    assert scaled.worst()[2] < 1e-7


# --- burn-in (1.8) -------------------------------------------------------------------------------------------------
def test_burn_in_reveals_a_bug_invisible_at_tiny_init():
    # With tiny weights every SVM margin is active, so forgetting the [margin > 0] factor changes nothing;
    # after a few optimizer steps some margins are inactive and the bug shows (notes 1.8).
    X, y = data(60, seed=9)
    model, theta = setup_user_model(NumpySVM(forget_indicator=True))
    before = theta.copy()
    at_init = check_gradients(model, theta, X, y)
    assert at_init.passed, str(at_init)
    sgd = OPTIMIZERS.build("sgd", lr=0.5)
    burned = check_gradients(model, theta, X, y, optimizer=sgd, burn_in_steps=30)
    assert burned.burn_in["steps"] == 30
    assert not burned.passed and {b for _, b, _ in burned.failures()} <= {"W", "b"}
    np.testing.assert_array_equal(theta, before)  # the burn-in trained a copy
    correct, _ = setup_user_model(NumpySVM())
    assert check_gradients(correct, theta, X, y, optimizer=sgd, burn_in_steps=30).passed


# --- every registered model, through the same interface ----------------------------------------------------------
@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_passes_and_is_untouched(name):
    X, y = data()
    model = MODELS.build(name).setup(D, C)
    theta = model.init_params(np.random.default_rng(0))
    before, X_before = theta.copy(), X.copy()
    l2 = REGULARIZERS.build("l2", reg=1e-3)
    report = check_gradients(model, theta, X, y, l2, l2.mask(model.layout))
    assert report.passed, str(report)
    assert [b.name for b in report.part("data").blocks] == model.layout.names
    assert not report.part("reg").skipped
    np.testing.assert_array_equal(theta, before)
    np.testing.assert_array_equal(X, X_before)


def test_options_are_validated_with_the_config_key():
    with pytest.raises(ConfigError, match="preflight.gradcheck.points"):
        make_options(points=0)
    with pytest.raises(ConfigError, match="preflight.gradcheck.parts"):
        make_options(parts=["data", "everything"])
    with pytest.raises(ConfigError, match="preflight.gradcheck.nope"):
        make_options({"nope": 1})
    assert make_options({"h": "1e-6"}).h == 1e-6  # YAML 1.1 reads 1e-6 as a string


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_every_registered_regularizer_gradient_matches_its_penalty(name):
    X, y = data()
    model = MODELS.build("mlp", hidden_sizes=[9]).setup(D, C)
    theta = model.init_params(np.random.default_rng(0))
    regularizer = REGULARIZERS.build(name)
    report = check_gradients(model, theta, X, y, regularizer, regularizer.mask(model.layout), parts=["reg"])
    assert report.passed, str(report)
    part = report.part("reg")
    if part.skipped is None:  # penalties are checked on every block; masked-out biases give exact zeros
        assert [b.name for b in part.blocks] == model.layout.names
        assert all(c.error == 0.0 for b in part.blocks if b.name.startswith("b") for c in b.coords)
