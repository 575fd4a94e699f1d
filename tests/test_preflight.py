"""Pre-flight checks (notes section 2): data checks, loss at chance, regularization raises the loss, gradient
check and overfitting a tiny subset; the run hook leaves the run's numbers alone; the check CLI."""
from __future__ import annotations

import json
import logging
import math
import textwrap
import time

import numpy as np
import pytest

from framework import MODELS, OPTIMIZERS, REGULARIZERS, Regularizer
from framework.core.errors import CheckFailed, ConfigError
from framework.checks.preflight import (check_chance_loss, check_data, check_overfit, check_reg_rise, preflight_config,
                                 run_preflight)
from framework.engine.run import Run
from framework.engine.train import default_callbacks

from conftest import FAST, compose_config
from user_models import NumpySoftmax as _NumpySoftmax

SMALL = ["epochs=1", "data.max_train=300", "++tensorboard.enabled=false", "++checkpoint.every=0"]


def NumpySoftmax(grad_factor=1.0, **kw):
    """The shared user model with this file's init (W std 0.1, zero bias); grad_factor scales dW."""
    return _NumpySoftmax(weight_factor=grad_factor, std=0.1, random_bias=False, **kw)


def swap_model(run, model):
    """Put a user model into a built Run (as if selected with model=...), without registering it globally."""
    run.model = model.setup(run.data.input_dim, run.data.num_classes, run.settings.dtype)
    run.layout = run.model.layout
    run.theta = run.model.init_params(np.random.default_rng(0))
    run.grad = np.zeros_like(run.theta)
    run.reg_mask = run.regularizer.mask(run.layout, run.settings.dtype)
    run.opt_state = run.optimizer.init(run.theta)
    return run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return Run(compose_config(*SMALL), tmp_path_factory.mktemp("digits"))


# --- 2.1 loss at chance ----------------------------------------------------------------------------------------
CHANCE = {"softmax": (math.log(10), 0.05), "svm": (9.0, 0.1)}  # -ln(1/10) = 2.3026; C - 1 = 9


def chance_models():
    """(registered model name, options) for every registered model with a softmax or SVM loss."""
    out = []
    for name in MODELS.names():
        model = MODELS.build(name)
        if getattr(model, "loss_kind", None) in CHANCE:
            out.append((name, {}))
    return out + [("mlp", {"loss": "svm"}), ("mlp", {"activation": "tanh", "hidden_sizes": [50, 50]})]


@pytest.mark.parametrize("name, options", chance_models())
def test_loss_at_chance_on_digits(digits_run, name, options):
    d = digits_run.data
    model = MODELS.build(name, **options).setup(d.input_dim, d.num_classes)
    expected, margin = CHANCE[model.loss_kind]
    result = check_chance_loss(model, d.X_train[:200], d.y_train[:200], np.random.default_rng(0))
    assert result.status == "pass", result.line()
    assert abs(result.details["measured"] - expected) < margin
    assert result.details["expected"] == pytest.approx(expected)


def test_default_run_reports_chance_loss(digits_run):
    report = run_preflight(digits_run)
    chance = report.check("chance")
    assert abs(chance.details["measured"] - 2.3026) < 0.05
    assert "2.3026" in chance.expected and chance.status == "pass"


def test_large_init_fails_chance_with_the_likely_cause(digits_run):
    d = digits_run.data
    model = NumpySoftmax(init_std=1.0).setup(d.input_dim, d.num_classes)
    result = check_chance_loss(model, d.X_train[:200], d.y_train[:200], np.random.default_rng(0))
    assert result.status == "fail"
    assert result.details["measured"] > 2.3026 + 0.2
    assert "expected 2.30 for 10 classes" in result.message and "weights too large at init" in result.message


# --- 2.2 regularization raises the loss ------------------------------------------------------------------------
class NegativeL2(Regularizer):
    """A regularizer with the sign wrong: it rewards large weights."""

    def penalty_grad(self, theta, grad, mask):
        grad -= self.cfg.reg * theta * mask
        return -0.5 * self.cfg.reg * float(np.sum(mask * theta ** 2))


def test_reg_rise_passes_for_l2_fails_for_a_wrong_sign_and_skips_none(digits_run):
    d = digits_run.data
    model = MODELS.build("mlp").setup(d.input_dim, d.num_classes)
    theta = model.init_params(np.random.default_rng(0))
    X, y = d.X_train[:100], d.y_train[:100]
    l2 = REGULARIZERS.build("l2", reg=1e-3)
    ok = check_reg_rise(model, theta, X, y, l2, l2.mask(model.layout))
    assert ok.status == "pass"
    losses = ok.details["losses"]
    assert losses[0] < losses[1] < losses[2] and ok.details["strengths"] == [0.0, 1e-3, 1e-2]
    # with reg = 0 the check uses its test strength instead of passing vacuously
    zero = check_reg_rise(model, theta, X, y, REGULARIZERS.build("l2", reg=0.0), l2.mask(model.layout), 0.5)
    assert zero.status == "pass" and zero.details["strengths"] == [0.0, 0.5, 5.0]
    bad = NegativeL2(REGULARIZERS.config("l2", reg=1e-3))
    wrong = check_reg_rise(model, theta, X, y, bad, l2.mask(model.layout))
    assert wrong.status == "fail" and "did not rise" in wrong.message
    none = REGULARIZERS.build("none")
    assert check_reg_rise(model, theta, X, y, none, none.mask(model.layout)).status == "skip"


# --- 2.3 overfit a tiny subset -----------------------------------------------------------------------------------
def test_overfit_passes_for_the_mlp_and_fails_for_a_broken_backward(digits_run):
    d = digits_run.data
    X, y = d.X_train[:20], d.y_train[:20]
    adam = OPTIMIZERS.build("adam", lr=1e-3)
    mlp = MODELS.build("mlp").setup(d.input_dim, d.num_classes)
    theta = mlp.init_params(np.random.default_rng(0))
    before = theta.copy()
    ok = check_overfit(mlp, theta, X, y, adam, 1e-3, np.random.default_rng(1))
    assert ok.status == "pass", ok.line()
    assert ok.details["loss"] <= 0.05 and ok.details["acc"] == 1.0 and ok.details["steps"] < 3000
    np.testing.assert_array_equal(theta, before)  # trained a copy

    broken = NumpySoftmax(grad_factor=0.0).setup(d.input_dim, d.num_classes)  # dW never computed
    theta = broken.init_params(np.random.default_rng(0))
    bad = check_overfit(broken, theta, X, y, adam, 1e-3, np.random.default_rng(1))
    assert bad.status == "fail"
    assert bad.details["acc"] < 1.0 and bad.details["loss"] > 0.05
    assert "could not overfit 20 examples" in bad.message and "backward" in bad.message
    # the correct user model with the same optimizer does overfit: the failure is the backward's
    fixed = NumpySoftmax().setup(d.input_dim, d.num_classes)
    assert check_overfit(fixed, fixed.init_params(np.random.default_rng(0)), X, y, adam, 1e-3,
                         np.random.default_rng(1)).status == "pass"


# --- data checks -------------------------------------------------------------------------------------------------
def test_data_checks_catch_nan_labels_shapes_and_warn_on_missing_class(digits_run):
    import copy

    d = digits_run.data
    model = MODELS.build("softmax").setup(d.input_dim, d.num_classes)
    theta = model.init_params(np.random.default_rng(0))
    assert check_data(d, model, theta).status == "pass"

    bad = copy.copy(d)
    bad.X_train = d.X_train.copy()
    bad.X_train[5, 3] = np.nan
    result = check_data(bad, model, theta)
    assert result.status == "fail" and "NaN/inf" in result.message and "first row 5" in result.message

    bad = copy.copy(d)
    bad.y_val = d.y_val.copy()
    bad.y_val[0] = 10
    assert "labels range over [0, 10], want [0, 9]" in check_data(bad, model, theta).message

    other = MODELS.build("softmax").setup(d.input_dim + 1, d.num_classes)
    result = check_data(d, other, other.init_params(np.random.default_rng(0)))
    assert result.status == "fail" and f"expects {d.input_dim + 1} inputs" in result.message

    missing = copy.copy(d)
    keep = d.y_train != 7
    missing.X_train, missing.y_train = d.X_train[keep], d.y_train[keep]
    result = check_data(missing, model, theta)
    assert result.status == "warn" and "class 7 has no training examples" in result.message
    assert result.details["class_counts"][7] == 0


# --- the run hook ------------------------------------------------------------------------------------------------
def rng_states(run):
    return {k: json.dumps(g.bit_generator.state, default=str) for k, g in run.rngs.items()}


def test_run_preflight_leaves_the_run_untouched_and_writes_the_report(tmp_path, caplog):
    cfg = compose_config(*SMALL, "preflight=full", "model.keep_prob=0.5")
    ref = Run(cfg, tmp_path / "reference")
    run = Run(cfg, tmp_path / "checked")
    states, theta, opt = rng_states(run), run.theta.copy(), [s.copy() for s in run.opt_state]
    with caplog.at_level(logging.INFO, logger="framework"):
        report = run_preflight(run)
    assert report.passed and report.mode == "full"
    assert [c.name for c in report.checks] == ["data", "chance", "reg_rise", "gradcheck", "overfit"]
    assert rng_states(run) == states
    np.testing.assert_array_equal(run.theta, theta)
    assert all(np.array_equal(a, b) for a, b in zip(run.opt_state, opt))
    # training after the pre-flight gives the same numbers, bit for bit, as without it
    assert run.fit()["metrics"] == ref.fit()["metrics"]

    saved = json.loads((tmp_path / "checked" / "preflight.json").read_text())
    assert saved["passed"] and saved["mode"] == "full"
    assert {c["name"]: c["status"] for c in saved["checks"]}["overfit"] == "pass"
    blocks = [b["block"] for p in saved["gradcheck"]["parts"] if p["name"] == "data" for b in p["blocks"]]
    assert blocks == run.layout.names
    text = caplog.text
    assert "loss at chance (2.1)" in text and "gradient check" in text and "W1" in text


def test_failure_message_ends_in_one_period(digits_run):
    """The overfit cause ends in "(notes 2.3)."; the report's message must not add a second period."""
    from framework.checks.preflight import OverfitOptions, PreflightReport

    d = digits_run.data
    mlp = MODELS.build("mlp").setup(d.input_dim, d.num_classes)
    bad = check_overfit(mlp, mlp.init_params(np.random.default_rng(0)), d.X_train[:20], d.y_train[:20],
                        OPTIMIZERS.build("sgd", lr=1e-6), 1e-6, np.random.default_rng(1), OverfitOptions(steps=2))
    assert bad.status == "fail" and bad.message.endswith("(notes 2.3).")
    text = PreflightReport("full", True, [bad]).failure_message()
    assert "(notes 2.3). Training did not start." in text and ".." not in text


def test_preflight_json_records_the_runs_dtype(tmp_path):
    run = Run(compose_config(*SMALL, "dtype=float32"), tmp_path)
    run_preflight(run)
    settings = json.loads((tmp_path / "preflight.json").read_text())["gradcheck"]["settings"]
    assert settings["model_dtype"] == "float32" and settings["check_dtype"] == "float64"


def test_quick_mode_skips_overfit_and_says_so(digits_run):
    report = run_preflight(digits_run)
    assert report.mode == "quick"
    overfit = report.check("overfit")
    assert overfit.status == "skip" and "preflight=full" in overfit.message
    assert report.gradcheck.settings["points"] == 2
    assert "skip" in str(report)


def test_broken_model_stops_the_run_in_strict_mode_and_warns_otherwise(tmp_path, caplog):
    run = swap_model(Run(compose_config(*SMALL), tmp_path), NumpySoftmax(bias_factor=1.5))
    with pytest.raises(CheckFailed) as info:
        run_preflight(run)
    text = str(info.value)
    assert info.value.exit_code == 4
    assert "gradient check" in text and "block b" in text and "backward" in text
    assert not json.loads((tmp_path / "preflight.json").read_text())["passed"]

    lenient = swap_model(Run(compose_config(*SMALL, "preflight.strict=false"), tmp_path / "lenient"),
                         NumpySoftmax(bias_factor=1.5))
    with caplog.at_level(logging.WARNING, logger="framework"):
        report = run_preflight(lenient)
    assert not report.passed and [c.name for c in report.failures] == ["gradcheck"]
    assert "training anyway" in caplog.text


def test_mode_off_runs_nothing(tmp_path):
    run = Run(compose_config(*FAST, "epochs=1"), tmp_path)
    report = run_preflight(run)
    assert report.mode == "off" and report.checks == [] and report.passed
    assert json.loads((tmp_path / "preflight.json").read_text())["mode"] == "off"


def test_preflight_config_is_validated():
    with pytest.raises(ConfigError, match="preflight.mode"):
        preflight_config({"mode": "fast"})
    with pytest.raises(ConfigError, match="preflight.gradcheck.coords_per_block"):
        preflight_config({"gradcheck": {"coords_per_block": 0}})
    with pytest.raises(ConfigError, match="preflight.overfit.stepz"):
        preflight_config({"overfit": {"stepz": 10}})
    assert preflight_config({"mode": False}).mode == "off"  # a bare YAML off
    cfg = preflight_config(compose_config().preflight)
    assert cfg.mode == "quick" and cfg.strict and cfg.gradcheck.points == 2


def test_quick_preflight_costs_a_small_fraction_of_the_default_run(tmp_path):
    """Quick pre-flight vs the default run, warm. The goal is <= 10% of the run; to keep the test short the run
    time is extrapolated from 2 of its epochs (fixed costs ignored, which only favours the run) and asserted
    with a generous margin. Speed goals proper belong to benchmarks."""
    warm = Run(compose_config("epochs=1", "++tensorboard.enabled=false", "++checkpoint.every=0"),
               tmp_path / "warm")
    run_preflight(warm)  # loads the cached kernels
    warm.fit()
    default = compose_config()
    run = Run(compose_config("epochs=2"), tmp_path / "default")
    start = time.perf_counter()
    report = run_preflight(run)
    preflight_s = time.perf_counter() - start
    run.callbacks = default_callbacks(run)
    start = time.perf_counter()
    run.fit()
    run_s = (time.perf_counter() - start) * default.epochs / 2
    print(f"\nquick pre-flight {preflight_s * 1e3:.1f} ms (checks {report.seconds * 1e3:.1f} ms), default run "
          f"~{run_s:.2f} s ({default.epochs} epochs): {preflight_s / run_s:.1%}")
    assert report.passed and report.mode == "quick"
    assert preflight_s < 0.25 * run_s


# --- the check CLI -----------------------------------------------------------------------------------------------
BROKEN_PLUGIN = '''
    """A user's plugin model whose bias gradient is 1.5x too large."""
    import numpy as np

    from framework import MODELS, Model
    from framework.core.layout import Layout


    class Broken(Model):
        def setup(self, input_dim, num_classes, dtype=np.float64):
            super().setup(input_dim, num_classes, dtype)
            self.layout = Layout([("W", (input_dim, num_classes), True), ("b", (num_classes,), False)])
            return self

        def init_params(self, rng, small=False):
            theta = np.zeros(self.layout.size, dtype=self.dtype)
            theta[:self.layout["W"].size] = rng.standard_normal(self.layout["W"].size) * 0.001
            return theta

        def scores(self, theta, X):
            return X @ self.layout.view(theta, "W") + self.layout.view(theta, "b")

        def loss_grad(self, theta, grad, X, y, idx=None, noise=None):
            if idx is not None:
                X, y = X[idx], y[idx]
            s = self.scores(theta, X)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            loss = -np.log(p[np.arange(len(y)), y]).mean()
            p[np.arange(len(y)), y] -= 1
            p /= len(y)
            self.layout.view(grad, "W")[:] = X.T @ p
            self.layout.view(grad, "b")[:] = 1.5 * p.sum(axis=0)
            return float(loss)


    @MODELS.register("broken")
    def build(cfg):
        """Linear softmax with a wrong bias gradient."""
        return Broken(cfg)
'''


def test_check_cli_passes_on_the_default_config_and_writes_only_its_output_dir(cli, tmp_path):
    result = cli(module="framework.check")
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stdout and "overfit 20 examples (2.3)" in result.stdout
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.parts[len(tmp_path.parts)] == "outputs" for p in written)
    reports = list(tmp_path.glob("outputs/checks/*/*/preflight.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["mode"] == "full"
    assert not (tmp_path / "outputs" / "runs").exists()


def test_check_cli_exits_4_for_a_broken_plugin_model(cli, tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "broken.py").write_text(textwrap.dedent(BROKEN_PLUGIN))
    result = cli("model=broken", module="framework.check")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert error.startswith("error: Pre-flight check failed")
    assert "gradient check" in error and "block b" in error
    assert "FAILED" in result.stdout  # the table was printed too
