"""Pre-flight checks before training (notes section 2, plus the gradient check of section 1).

`run_preflight(run) -> PreflightReport` reads `run.cfg.preflight` (conf/preflight/{quick,full,off}.yaml):

- data: finite features, integer labels in [0, C), every class present in training (a missing class is a
  warning), shapes against the model (D inputs, C classes, P parameters, scores (N, C)).
- chance (notes 2.1): with small weights (`model.init_params(rng, small=True)`) and reg = 0 the loss must be
  -ln(1/C) for softmax and C - 1 for the margin-1 SVM (`model.loss_kind`), within `chance.tolerance`.
- reg_rise (2.2): the loss at the run's initial parameters rises with the regularization strength
  (0 < s < 10 s with s = the run's reg, or `reg_rise.test_strength` when the run's reg is 0).
- gradcheck (1.1-1.11): framework.checks.gradcheck on the run's initial parameters (a copy), data loss then
  regularization alone; see GradCheckOptions.
- overfit (2.3, full mode only; quick skips it): about 20 training examples, reg = 0, a fresh copy of the run's
  optimizer, must reach loss <= `overfit.max_loss` and 100% training accuracy within `overfit.steps` steps.

A failing check stops the run before training (framework.core.errors.CheckFailed, exit code 4) with what was
measured, what was expected and the likely cause; `strict: false` logs warnings instead. The report is
logged as a table and written to `<run_dir>/preflight.json`. The checks use their own Generator seeded from
the run's seed and copies of theta, model buffers and optimizer: the run's numbers are unchanged.
"""
from __future__ import annotations

import logging
import math
import time
import typing
from dataclasses import dataclass, field

import numpy as np

from framework.components.losses import LOSSES
from framework.core.errors import CheckFailed, FrameworkError
from framework.checks.gradcheck import check_gradients, has_penalty, run_steps, with_strength
from framework.checks.gradcheck_report import GradCheckReport, make_options
from framework.core.params import param, plain, section

log = logging.getLogger("framework")
MODES = ("full", "quick", "off")
SEED_SALT = 12345  # the pre-flight Generator is default_rng([seed, SEED_SALT]), independent of the run's


@dataclass
class ChanceOptions:
    rows: int = param(200, "training examples on which the loss at chance is measured", range="[1, inf)")
    tolerance: float = param(0.05, "allowed |measured - expected| as a fraction of the expected loss",
                             range="(0, inf)")


@dataclass
class RegRiseOptions:
    test_strength: float = param(1.0, "strength s used when the run's reg is 0: the loss must rise over "
                                      "0 < s < 10 s (notes 2.2)", range="(0, inf)")


@dataclass
class OverfitOptions:
    examples: int = param(20, "training examples to overfit (notes 2.3: about 20)", range="[1, inf)")
    steps: int = param(3000, "optimizer steps allowed (each step sees all the examples)", range="[1, inf)")
    lr: typing.Optional[float] = param(None, "learning rate; null = the run's lr", range="(0, inf)")
    max_loss: float = param(0.05, "the data loss (reg = 0, eval mode) must fall to this or below",
                            range="[0, inf)")
    min_acc: float = param(1.0, "training accuracy required on the examples (notes 2.3: 100%)",
                           range="[0, 1]")
    check_every: int = param(10, "steps between the loss/accuracy checks that may stop early",
                             range="[1, inf)")


@dataclass
class PreflightConfig:
    """`cfg.preflight`: mode, strictness and the options of each check (sub-dataclasses)."""

    mode: str = param("quick", "full | quick | off", choices=MODES)
    strict: bool = param(True, "a failed check stops the run; false logs a warning and trains anyway")
    chance: ChanceOptions = field(default_factory=ChanceOptions)
    reg_rise: RegRiseOptions = field(default_factory=RegRiseOptions)
    gradcheck: object = None  # GradCheckOptions, validated by framework.checks.gradcheck_report.make_options
    overfit: OverfitOptions = field(default_factory=OverfitOptions)


def preflight_config(node) -> PreflightConfig:
    """A validated PreflightConfig from the `preflight` config node (DictConfig, dict or None)."""
    values = plain(node)
    if values.get("mode") is False:  # a bare YAML `off` reads as false
        values["mode"] = "off"
    parts = ("chance", "reg_rise", "overfit", "gradcheck")  # sections of their own, validated below
    top = section(PreflightConfig, {k: v for k, v in values.items() if k not in parts}, "preflight")
    top.chance = section(ChanceOptions, values.get("chance"), "preflight.chance")
    top.reg_rise = section(RegRiseOptions, values.get("reg_rise"), "preflight.reg_rise")
    top.overfit = section(OverfitOptions, values.get("overfit"), "preflight.overfit")
    top.gradcheck = make_options(values.get("gradcheck"))
    return top


# --- results -------------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """One check: status pass | fail | warn | skip; measured vs expected and, when not passing, the cause."""

    name: str
    title: str
    status: str
    measured: str = ""
    expected: str = ""
    message: str = ""
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def line(self) -> str:
        text = f"{self.title}: measured {self.measured}, expected {self.expected}"
        return f"{text}: {self.message}" if self.message else text


@dataclass
class PreflightReport:
    mode: str
    strict: bool
    checks: list[CheckResult] = field(default_factory=list)
    gradcheck: GradCheckReport | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.failed]

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def failure_message(self, training: bool = True) -> str:
        text = (f"Pre-flight check failed{' before training' if training else ''} ({self.mode} mode): "
                + "; ".join(c.line() for c in self.failures).rstrip(".") + ".")
        if training:
            text += (" Training did not start. Fix the cause, or set preflight.strict=false to train anyway "
                     "(preflight=off skips the checks).")
        return text

    def to_dict(self) -> dict:
        return {"mode": self.mode, "strict": self.strict, "passed": self.passed, "seconds": self.seconds,
                "warnings": self.warnings,
                "checks": [{"name": c.name, "title": c.title, "status": c.status, "measured": c.measured,
                            "expected": c.expected, "message": c.message, "seconds": c.seconds,
                            "details": c.details} for c in self.checks],
                "gradcheck": self.gradcheck.to_dict() if self.gradcheck is not None else None}

    def __str__(self) -> str:
        if self.mode == "off":
            return "Pre-flight: off (preflight=off)"
        head = (f"Pre-flight ({self.mode} mode, {'strict' if self.strict else 'not strict'}): "
                f"{'all checks passed' if self.passed else f'{len(self.failures)} FAILED'} "
                f"in {self.seconds * 1e3:.1f} ms")
        rows = [("check", "status", "measured", "expected", "ms")]
        for c in self.checks:
            rows.append((c.title, c.status.upper() if c.status == "fail" else c.status, c.measured, c.expected,
                         f"{c.seconds * 1e3:.1f}"))
        widths = [min(max(len(r[i]) for r in rows), 48) for i in range(5)]
        lines = [head]
        for r in rows:
            lines.append("  " + "  ".join(r[i].ljust(widths[i]) if i < 4 else r[i].rjust(widths[i])
                                          for i in range(5)))
        for c in self.checks:
            if c.message and c.status in ("fail", "warn", "skip"):
                lines.append(f"  {c.title}: {c.message}")
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.gradcheck is not None:
            lines += ["  " + s for s in str(self.gradcheck).splitlines()]
        return "\n".join(lines)


# --- the checks ----------------------------------------------------------------------------------------------
def expected_chance_loss(loss_kind: str, num_classes: int) -> float | None:
    """Loss with all scores equal (notes 2.1): -ln(1/C) for softmax, C - 1 for the margin-1 SVM (the losses'
    table, components/losses.py); None for a loss kind it does not hold."""
    entry = LOSSES.get(loss_kind) if isinstance(loss_kind, str) else None
    return None if entry is None else entry.chance(num_classes)


def check_data(data, model, theta) -> CheckResult:
    """Finite features, labels in range, class counts (warn on a missing class), shapes against the model."""
    C = int(data.num_classes)
    problems, warnings = [], []
    splits = [("train", data.X_train, data.y_train), ("val", data.X_val, data.y_val),
              ("test", data.X_test, data.y_test)]
    D = data.X_train.shape[1] if data.X_train.ndim == 2 else None
    for name, X, y in splits:
        X, y = np.asarray(X), np.asarray(y)
        if len(y) == 0 and name != "train":
            continue
        if X.ndim != 2 or len(X) != len(y):
            problems.append(f"{name} features have shape {X.shape} for {len(y)} labels (want (N, D) with N = "
                            f"number of labels): the dataset plugin returned mismatched arrays")
            continue
        if D is not None and X.shape[1] != D:
            problems.append(f"{name} has {X.shape[1]} features, train has {D}")
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            problems.append(f"{name} has {int((~finite).sum())} rows with NaN/inf features (first row "
                            f"{int(np.argmin(finite))}): clean the data or fix its preprocessing")
        if not np.issubdtype(y.dtype, np.integer):
            problems.append(f"{name} labels have dtype {y.dtype}, want integers")
        elif len(y) and (y.min() < 0 or y.max() >= C):
            problems.append(f"{name} labels range over [{int(y.min())}, {int(y.max())}], want [0, {C - 1}] for "
                            f"{C} classes: wrong num_classes or labels not 0-based")
    counts = np.bincount(np.clip(np.asarray(data.y_train, dtype=np.int64), 0, max(C - 1, 0)), minlength=C)
    missing = [int(c) for c in np.flatnonzero(counts == 0)]
    if missing:
        warnings.append(f"class{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing[:10]))} "
                        f"{'have' if len(missing) > 1 else 'has'} no training examples: the model cannot learn "
                        f"{'them' if len(missing) > 1 else 'it'}")
    if model.input_dim != D:
        problems.append(f"the model expects {model.input_dim} inputs, the data has {D} features")
    if model.num_classes != C:
        problems.append(f"the model has {model.num_classes} outputs, the data has {C} classes")
    if np.shape(theta) != (model.layout.size,):
        problems.append(f"theta has shape {np.shape(theta)}, the layout needs ({model.layout.size},)")
    if not problems:
        scores = np.asarray(model.scores(theta, data.X_train[:2]))
        if scores.shape != (min(2, len(data.y_train)), C):
            problems.append(f"model.scores returned shape {scores.shape} for 2 rows, want (2, {C})")
        elif not np.isfinite(scores).all():
            problems.append("model.scores returned NaN/inf at the initial parameters: check the init")
    n = len(data.y_train)
    measured = f"{n} train rows x {D} features, {C} classes, P={model.layout.size}"
    details = {"class_counts": counts.tolist(), "sizes": data.describe()}
    if problems:
        return CheckResult("data", "data and shapes", "fail", measured, "finite features, labels in "
                           f"[0, {C - 1}], shapes matching the model", "; ".join(problems), details=details)
    status = "warn" if warnings else "pass"
    return CheckResult("data", "data and shapes", status, measured, "finite, labels in range, all classes",
                       "; ".join(warnings), details=details)


def check_chance_loss(model, X, y, rng, tolerance: float = 0.05, theta_run=None) -> CheckResult:
    """Notes 2.1: loss with small weights and reg = 0 against -ln(1/C) (softmax) or C - 1 (SVM).
    model: a float64 Model; X (N, D), y (N,); tolerance: fraction of the expected value."""
    C = int(model.num_classes)
    expected = expected_chance_loss(getattr(model, "loss_kind", None), C)
    title = "loss at chance (2.1)"
    if expected is None:
        return CheckResult("chance", title, "skip", "-", "-",
                           f"no chance value known for loss_kind={getattr(model, 'loss_kind', None)!r} "
                           "(softmax or svm)")
    theta = model.init_params(rng, small=True)
    measured = float(model.loss(np.asarray(theta, dtype=np.float64), X, y))
    tol = tolerance * expected
    details = {"expected": expected, "measured": measured, "tolerance": tol, "rows": int(len(y)),
               "loss_kind": model.loss_kind, "classes": C}
    note = ""
    if theta_run is not None:  # information: the loss at the run's own init (not judged)
        details["loss_at_run_init"] = float(model.loss(np.asarray(theta_run, dtype=np.float64), X, y))
        note = f" (run's init: {details['loss_at_run_init']:.4f})"
    exp_text = f"{expected:.4f} +- {tol:.3g} ({'-ln(1/C)' if model.loss_kind == 'softmax' else 'C - 1'}, C={C})"
    if not math.isfinite(measured) or abs(measured - expected) > tol:
        if not math.isfinite(measured) or measured > expected:
            cause = "weights too large at init (init_params(small=True) not small?) or a loss that is too large"
        else:
            cause = ("loss below chance with tiny weights: a loss term missing or divided too much (mean over "
                     "classes instead of examples?), or labels leaking into the inputs")
        msg = f"initial loss {measured:.2f}, expected {expected:.2f} for {C} classes: {cause}"
        return CheckResult("chance", title, "fail", f"{measured:.4f}{note}", exp_text, msg, details=details)
    return CheckResult("chance", title, "pass", f"{measured:.4f}{note}", exp_text, details=details)


def check_reg_rise(model, theta, X, y, regularizer, mask, test_strength: float = 1.0) -> CheckResult:
    """Notes 2.2: data loss + penalty at strengths 0 < s < 10 s must rise strictly (s = the regularizer's
    strength, or test_strength when that is 0). theta (P,) is not modified."""
    title = "reg raises loss (2.2)"
    if not has_penalty(regularizer):
        return CheckResult("reg_rise", title, "skip", "-", "-",
                           f"regularizer {type(regularizer).__name__} adds no penalty")
    s = regularizer.reg if regularizer.active else test_strength
    theta = np.array(theta, dtype=np.float64, copy=True)
    mask = np.asarray(mask, dtype=np.float64)
    data_loss = float(model.loss(theta, X, y))
    strengths = [0.0, s, 10.0 * s]
    scratch = np.zeros_like(theta)
    losses = []
    for strength in strengths:
        scratch[:] = 0.0
        penalty = float(with_strength(regularizer, strength).penalty_grad(theta, scratch, mask)) if strength else 0.0
        losses.append(data_loss + penalty)
    measured = f"{losses[0]:.5g}, then {losses[1] - losses[0]:+.2g}, {losses[2] - losses[0]:+.2g}"
    expected = f"rising over reg = {', '.join(f'{v:g}' for v in strengths)}" + \
        ("" if regularizer.active else " (test strength: the run's reg is 0)")
    details = {"strengths": strengths, "losses": losses}
    if not (losses[1] > losses[0] and losses[2] > losses[1]):
        return CheckResult("reg_rise", title, "fail", measured, expected,
                           "the loss did not rise with the regularization strength: the penalty is not added, "
                           "has the wrong sign, or its mask selects nothing (all weights zero at init?)",
                           details=details)
    return CheckResult("reg_rise", title, "pass", measured, expected, details=details)


def check_overfit(model, theta, X, y, optimizer, lr: float, rng, opts: OverfitOptions | None = None) -> CheckResult:
    """Notes 2.3: train a copy of theta with reg = 0 on (X, y) (about 20 rows) with a fresh copy of `optimizer`
    until loss <= opts.max_loss and accuracy >= opts.min_acc (eval mode), within opts.steps steps."""
    opts = opts or OverfitOptions()
    title = f"overfit {len(y)} examples (2.3)"
    theta = np.array(theta, copy=True)
    X = np.ascontiguousarray(X, dtype=theta.dtype)
    y = np.ascontiguousarray(y, dtype=np.int64)
    lr = float(opts.lr if opts.lr is not None else lr)
    state = {}

    def measure(t):
        state["loss"] = float(model.loss(t, X, y))
        state["acc"] = float(np.mean(model.predict(t, X) == y))
        return state["loss"] <= opts.max_loss and state["acc"] >= opts.min_acc

    first = measure(theta)
    first_loss = state["loss"]
    taken = 0
    if not first:
        taken, losses = run_steps(model, theta, X, y, optimizer, opts.steps, lr, rng, batch=None,
                                  stop=measure, stop_every=opts.check_every)
        ok = measure(theta)
    else:
        ok = True
    measured = f"loss {state['loss']:.4g}, acc {state['acc']:.0%} after {taken} steps"
    expected = f"loss <= {opts.max_loss:g}, acc >= {opts.min_acc:.0%} within {opts.steps} steps"
    details = {"examples": int(len(y)), "steps": taken, "lr": lr, "loss_first": first_loss,
               "loss": state["loss"], "acc": state["acc"]}
    if ok:
        return CheckResult("overfit", title, "pass", measured, expected,
                           "passing does not prove correctness (random features also overfit)", details=details)
    if not math.isfinite(state["loss"]) or state["loss"] > first_loss:
        cause = f"the loss rose from {first_loss:.4g}: learning rate {lr:g} too high, or the gradient's sign wrong"
    else:
        cause = (f"the loss only fell from {first_loss:.4g}: backward broken (check the gradient), learning rate "
                 f"{lr:g} too low for the budget (preflight.overfit.lr / steps), or a model too small")
    return CheckResult("overfit", title, "fail", measured, expected,
                       f"could not overfit {len(y)} examples with reg = 0: {cause}. Do not proceed (notes 2.3).",
                       details=details)


def _guarded(fn, name: str, title: str) -> CheckResult:
    """Run one check; an exception inside a model or plugin becomes a failed check naming it."""
    start = time.perf_counter()
    try:
        result = fn()
    except FrameworkError:
        raise
    except Exception as exc:  # a user's model raising is a failed check, not a traceback
        result = CheckResult(name, title, "fail", f"raised {type(exc).__name__}", "no exception",
                             f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - start
    return result


# --- the run hook --------------------------------------------------------------------------------------------
def preflight_rng(seed: int) -> np.random.Generator:
    """The pre-flight's own Generator: derived from the run's seed, independent of the run's streams."""
    return np.random.default_rng([int(seed), SEED_SALT])


def run_checks(run, cfg: PreflightConfig) -> PreflightReport:
    """All checks of cfg.mode on a Run, without logging, writing or raising (see run_preflight)."""
    start = time.perf_counter()
    report = PreflightReport(cfg.mode, cfg.strict)
    if cfg.mode == "off":
        return report
    rng = preflight_rng(run.settings.seed)
    data = run.data
    model64 = run.model.with_dtype(np.float64)  # own buffers; checks of values run in float64 (1.3)
    theta0 = np.array(run.theta, dtype=np.float64, copy=True)
    rows = min(cfg.chance.rows, len(data.y_train))
    X64 = np.ascontiguousarray(data.X_train[:rows], dtype=np.float64)
    y64 = np.ascontiguousarray(data.y_train[:rows], dtype=np.int64)
    mask = np.asarray(run.reg_mask, dtype=np.float64)

    report.checks.append(_guarded(lambda: check_data(data, model64, theta0), "data", "data and shapes"))
    if report.checks[-1].failed:  # the other checks would only fail again, less clearly
        report.seconds = time.perf_counter() - start
        return report
    report.checks.append(_guarded(lambda: check_chance_loss(model64, X64, y64, rng, cfg.chance.tolerance,
                                                            theta_run=theta0), "chance", "loss at chance (2.1)"))
    report.checks.append(_guarded(lambda: check_reg_rise(model64, theta0, X64, y64, run.regularizer, mask,
                                                         cfg.reg_rise.test_strength),
                                  "reg_rise", "reg raises loss (2.2)"))

    def gradcheck():
        # the run's model, not model64: the report records the run's dtype (the check itself runs in float64)
        gc = check_gradients(run.model, theta0, data.X_train, data.y_train, run.regularizer, mask, cfg.gradcheck,
                             optimizer=run.optimizer, lr=run.settings.lr, rng=rng)
        report.gradcheck = gc
        worst_part, worst_block, worst = gc.worst()
        expected = ", ".join(f"{p.name} <= {p.tolerance:g}" for p in gc.parts if p.skipped is None)
        measured = f"worst rel err {worst:.1e} ({worst_part}/{worst_block})" if worst_block else "-"
        if gc.kinks_crossed:
            measured += f", {gc.kinks_crossed} kinks crossed"
        if gc.passed:
            return CheckResult("gradcheck", "gradient check (1.x)", "warn" if gc.warnings else "pass", measured,
                               expected, " ".join(gc.warnings), details={"failures": []})
        fails = gc.failures()
        names = ", ".join(f"block {b} of the {'regularization' if p == 'reg' else p} gradient "
                          f"(rel err {e:.2g})" for p, b, e in fails)
        cause = ("the regularizer's penalty_grad does not match its penalty" if all(p == "reg" for p, _, _ in fails)
                 else "its backward pass (analytic gradient) is wrong")
        return CheckResult("gradcheck", "gradient check (1.x)", "fail", measured, expected,
                           f"analytic and numerical gradients disagree in {names}: {cause}",
                           details={"failures": [list(f) for f in fails]})

    report.checks.append(_guarded(gradcheck, "gradcheck", "gradient check (1.x)"))

    title = f"overfit {min(cfg.overfit.examples, len(data.y_train))} examples (2.3)"
    if cfg.mode == "full":
        def overfit():
            n = min(cfg.overfit.examples, len(data.y_train))
            pick = np.sort(rng.choice(len(data.y_train), size=n, replace=False))
            model = run.model.with_dtype(run.settings.dtype)  # the run's precision, separate buffers
            return check_overfit(model, np.array(run.theta, copy=True), data.X_train[pick], data.y_train[pick],
                                 run.optimizer, run.settings.lr, rng, cfg.overfit)

        report.checks.append(_guarded(overfit, "overfit", title))
    else:
        report.checks.append(CheckResult("overfit", title, "skip", "-", "-",
                                         "skipped in quick mode; preflight=full overfits a tiny subset first"))
    report.seconds = time.perf_counter() - start
    return report


def run_preflight(run, raise_on_failure: bool | None = None, training: bool = True) -> PreflightReport:
    """The pre-flight of a Run, called by train() right before run.fit().

    Reads run.cfg.preflight, runs the checks of its mode, logs the report as a table (logger "framework"),
    writes <run.run_dir>/preflight.json, and raises CheckFailed (exit code 4) when a check fails and
    preflight.strict is true (a warning otherwise). raise_on_failure overrides strict when not None.
    training=False (the check CLI) words the failure without training advice.
    The run's random streams, parameters, model buffers and optimizer state are not touched."""
    from framework.core.files import write_json_atomic

    cfg = preflight_config(run.cfg.get("preflight") if hasattr(run.cfg, "get") else None)
    report = run_checks(run, cfg)
    if cfg.mode != "off" or not training:
        log.info("%s", report)
        for c in report.checks:
            if c.status == "warn":
                log.warning("pre-flight warning: %s: %s", c.title, c.message)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.run_dir / "preflight.json", report.to_dict())
    strict = cfg.strict if raise_on_failure is None else raise_on_failure
    if not report.passed:
        if strict:
            raise CheckFailed(report.failure_message(training))
        for c in report.failures if training else ():
            log.warning("pre-flight check failed (preflight.strict=false, training anyway): %s", c.line())
    return report
