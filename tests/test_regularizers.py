"""Regularizers: penalty against its closed form, gradient against a centered difference in float64, biases
excluded unless include_biases, max-norm projection, bad strength."""
import numpy as np
import pytest

import framework
from framework import REGULARIZERS, Layout
from framework.core.errors import ConfigError

from conftest import FAST, assert_clean_failure, compose_config

LAYOUT = Layout([("W1", (6, 4), True), ("b1", (4,), False), ("W2", (4, 3), True), ("b2", (3,), False)])
REG = 0.3


def away_from_zero(rng, n):
    """Values with |x| >= 0.1 so a centered difference with h = 1e-6 never crosses L1's kink at 0."""
    return np.sign(rng.standard_normal(n)) * (0.1 + np.abs(rng.standard_normal(n)))


def options(name, **extra):
    fields = REGULARIZERS.defaults(name)
    return {**({"l1_ratio": 0.3} if "l1_ratio" in fields else {}), "reg": REG, **extra}


# name -> penalty as a function of the penalized coordinates w (1-D), written from each documented formula
CLOSED_FORMS = {
    "none": lambda w: 0.0,
    "l2": lambda w: 0.5 * REG * np.sum(w ** 2),
    "l1": lambda w: REG * np.sum(np.abs(w)),
    "elastic": lambda w: REG * (0.3 * np.sum(np.abs(w)) + 0.7 * 0.5 * np.sum(w ** 2)),
    "maxnorm": lambda w: 0.0,
}


@pytest.mark.parametrize("include_biases", [False, True])
@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_penalty_and_gradient(name, include_biases):
    if name not in CLOSED_FORMS:
        pytest.fail(f"regularizer {name!r} has no closed form in tests/test_regularizers.py: add one")
    rng = np.random.default_rng(0)
    reg = REGULARIZERS.build(name, **options(name, include_biases=include_biases))
    mask = reg.mask(LAYOUT)
    theta = away_from_zero(rng, LAYOUT.size)
    penalized = np.concatenate([theta[b.offset:b.stop] for b in LAYOUT if b.decay or include_biases])
    assert reg.penalty(theta, mask) == pytest.approx(CLOSED_FORMS[name](penalized), rel=1e-12, abs=1e-300)
    analytic = reg.gradient(theta, mask)
    h = 1e-6
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        plus, minus = theta.copy(), theta.copy()
        plus[i] += h
        minus[i] -= h
        numeric[i] = (reg.penalty(plus, mask) - reg.penalty(minus, mask)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)
    if not include_biases:
        for b in ("b1", "b2"):
            assert not LAYOUT.view(analytic, b).any()
    # penalty_grad adds into grad (the data gradient is already there) and returns the penalty
    grad = np.ones_like(theta)
    assert reg.penalty_grad(theta, grad, mask) == pytest.approx(reg.penalty(theta, mask), rel=1e-15)
    np.testing.assert_allclose(grad, 1.0 + analytic, rtol=1e-15)


def test_l1_subgradient_is_zero_at_zero():
    reg = REGULARIZERS.build("l1", reg=0.5)
    theta = np.array([-2.0, 0.0, 3.0, -0.0])
    mask = np.ones(4)
    np.testing.assert_array_equal(reg.gradient(theta, mask), [-0.5, 0.0, 0.5, 0.0])
    assert reg.penalty(theta, mask) == 2.5


def test_elastic_endpoints_are_l1_and_l2():
    rng = np.random.default_rng(1)
    theta, mask = rng.standard_normal(LAYOUT.size), LAYOUT.decay_mask()
    for ratio, other in ((1.0, "l1"), (0.0, "l2")):
        e = REGULARIZERS.build("elastic", reg=REG, l1_ratio=ratio)
        o = REGULARIZERS.build(other, reg=REG)
        assert e.penalty(theta, mask) == pytest.approx(o.penalty(theta, mask), rel=1e-14)
        np.testing.assert_allclose(e.gradient(theta, mask), o.gradient(theta, mask), rtol=1e-14)


def test_maxnorm_projection():
    rng = np.random.default_rng(2)
    theta = rng.standard_normal(LAYOUT.size)
    W1 = LAYOUT.view(theta, "W1")
    W1[:, 0] *= 10.0  # far above the limit
    W1[:, 1] *= 0.01  # far below
    before = theta.copy()
    reg = REGULARIZERS.build("maxnorm", max_norm=1.5)
    reg.project(theta, LAYOUT)
    for name in ("W1", "W2"):
        old, new = LAYOUT.view(before, name), LAYOUT.view(theta, name)
        old_norms, new_norms = np.linalg.norm(old, axis=0), np.linalg.norm(new, axis=0)
        assert np.all(new_norms <= 1.5 * (1 + 1e-12))
        for j in range(old.shape[1]):
            if old_norms[j] <= 1.5:
                np.testing.assert_array_equal(new[:, j], old[:, j])  # untouched, bit for bit
            else:
                assert new_norms[j] == pytest.approx(1.5, rel=1e-12)
                np.testing.assert_allclose(new[:, j], old[:, j] * 1.5 / old_norms[j], rtol=1e-12)
    assert np.linalg.norm(LAYOUT.view(before, "W1")[:, 0]) > 1.5  # the test did exercise a rescale
    for b in ("b1", "b2"):
        np.testing.assert_array_equal(LAYOUT.view(theta, b), LAYOUT.view(before, b))
    assert not reg.active and reg.penalty(theta, LAYOUT.decay_mask()) == 0.0


def test_maxnorm_constrains_a_training_run(tmp_path):
    class Final(framework.Callback):
        def on_train_end(self, run):
            self.theta, self.layout = run.theta.copy(), run.layout

    final = Final()
    cfg = compose_config(*FAST, "epochs=2", "regularizer=maxnorm", "regularizer.max_norm=0.5", "optimizer=sgd")
    summary = framework.train(cfg, run_dir=tmp_path, callbacks=[final])
    assert summary["status"] == "ok"
    norms = [np.linalg.norm(final.layout.view(final.theta, b.name), axis=0) for b in final.layout if b.decay]
    assert max(n.max() for n in norms) <= 0.5 * (1 + 1e-12)
    assert max(n.max() for n in norms) > 0.49  # the constraint was active, not trivially met


@pytest.mark.parametrize("name", ["l2", "l1", "elastic"])
def test_negative_strength_is_an_error(name):
    with pytest.raises(ConfigError) as info:
        REGULARIZERS.build(name, reg=-1e-3)
    assert "regularizer.reg" in str(info.value) and "[0, inf)" in str(info.value)


def test_bad_max_norm_and_l1_ratio():
    with pytest.raises(ConfigError, match=r"regularizer.max_norm.*\(0, inf\)"):
        REGULARIZERS.build("maxnorm", max_norm=0.0)
    with pytest.raises(ConfigError, match=r"regularizer.l1_ratio.*\[0, 1\]"):
        REGULARIZERS.build("elastic", l1_ratio=1.5)


def test_negative_reg_through_the_cli(cli):
    assert_clean_failure(cli("regularizer=l1", "reg=-0.1", "preflight=off", "epochs=1"), ["'reg'", "-0.1", ">= 0"])
