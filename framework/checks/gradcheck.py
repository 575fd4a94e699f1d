"""Gradient check of any Model through its `loss_grad` interface (notes section 1).

`check_gradients(model, theta, X, y, regularizer=None, mask=None, ...)` compares the analytic gradient with a
centered finite difference on a few coordinates of every parameter block and returns a `GradCheckReport`
(readable `str()`, `to_dict()` for JSON). Every numbered tip of the notes is a behaviour or an option of
`GradCheckOptions` (the `preflight.gradcheck` config group, conf/preflight/*.yaml):

1.1  centered difference (f(x+h) - f(x-h)) / 2h, never the one-sided formula (behaviour).
1.2  relative error |a - n| / max(|a|, |n|), 0 when both are exactly 0; bands > 1e-2 wrong, 1e-2..1e-4 uneasy,
     < 1e-4 fine with kinks, < 1e-7 good. Pass/fail: `tol_kinks` (1e-4) for objectives with kinks,
     `tol_smooth` (1e-6) for kink-free ones (tanh, softmax), where 1e-4 is too high.
1.3  always float64: the model is cloned with `model.with_dtype(np.float64)` and theta/X cast (behaviour).
1.4  raw analytic/numeric values are in the report; magnitudes in (0, `tiny`) are flagged, not judged, with the
     advice to scale the loss (`loss_scale`); so is a mismatch smaller than the round-off of the difference
     quotient (~10 ulps of max(|f|, loss_scale) / 2h), which no step can resolve.
1.5  kinks: `model.winners(theta, X, y, noise)` records the outcome of every max/hinge; a coordinate whose
     winners differ between x+h and x-h is reported as "kink crossed", not failed (`kinks`).
1.6  a few datapoints (`points`, default 3).
1.7  h = 1e-5 (`h`); a failing coordinate is retried over `retry_h` (1e-4 ... 1e-7) and the best is reported.
1.8  optional burn-in of `burn_in_steps` optimizer steps before checking (`burn_in_steps`, `burn_in_batch`).
1.9  the data loss alone (reg = 0) first, then the regularization term alone at `reg_strength` (`parts`).
1.10 dropout: noise drawn once and the same values passed to f(x+h), f(x-h) and the analytic gradient
     (`fixed_noise`; false redraws per evaluation, only to demonstrate why it matters).
1.11 a few coordinates from every parameter block (`coords_per_block`, all of a smaller block).

Nothing here touches the caller's arrays, model buffers or random streams: theta, X and the model are copied
and randomness comes from the `rng` argument (or `np.random.default_rng(seed)`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import numpy as np

from framework.components.losses import LOSSES
from framework.checks.gradcheck_report import (Attempt, BlockResult, CoordResult, GradCheckOptions, GradCheckReport,
                                               PartResult, ROUNDOFF_ULPS, make_options, relative_error)

# --- evaluation helpers ------------------------------------------------------------------------------------
class _Noise:
    """The random state handed to every evaluation (notes 1.10): one draw, restored before each use (the
    model may reuse its buffer), or a fresh draw per evaluation when `fixed` is false."""

    def __init__(self, model, rng, n: int, fixed: bool):
        self.model, self.rng, self.n, self.fixed = model, rng, n, fixed
        first = model.sample_noise(rng, n)
        self.master = None if first is None else copy.deepcopy(np.array(first, copy=True)
                                                               if isinstance(first, np.ndarray) else first)
        self.work = self.master.copy() if isinstance(self.master, np.ndarray) else None

    @property
    def present(self) -> bool:
        return self.master is not None

    def get(self):
        if self.master is None:
            return None
        if not self.fixed:
            fresh = self.model.sample_noise(self.rng, self.n)
            return np.array(fresh, copy=True) if isinstance(fresh, np.ndarray) else copy.deepcopy(fresh)
        if self.work is not None:
            np.copyto(self.work, self.master)
            return self.work
        return copy.deepcopy(self.master)


def with_strength(regularizer, strength: float):
    """A copy of `regularizer` whose config has reg = strength (the original is untouched)."""
    clone = copy.copy(regularizer)
    cfg = getattr(regularizer, "cfg", None)
    if dataclasses.is_dataclass(cfg) and any(f.name == "reg" for f in dataclasses.fields(cfg)):
        clone.cfg = dataclasses.replace(cfg, reg=float(strength))
    return clone


def has_penalty(regularizer) -> bool:
    """False for a regularizer that adds nothing (it keeps the base class's zero penalty_grad)."""
    from framework.components.regularize import Regularizer

    return regularizer is not None and type(regularizer).penalty_grad is not Regularizer.penalty_grad


def declares_kinks(model) -> bool:
    """Whether the model says its objective has max/hinge kinks (ReLU-family activation or SVM loss)."""
    kind = getattr(model, "loss_kind", None)
    return getattr(model, "activation_kind", None) in ("relu", "leaky_relu") or \
        (isinstance(kind, str) and kind in LOSSES and LOSSES[kind].kinks)


def sample_coordinates(layout, per_block: int, rng) -> dict[str, np.ndarray]:
    """Flat theta indices, sorted, for each block: all of a block with <= per_block entries (notes 1.11)."""
    out = {}
    for b in layout:
        if b.size <= per_block:
            picks = np.arange(b.size)
        else:
            picks = np.sort(rng.choice(b.size, size=per_block, replace=False))
        out[b.name] = picks.astype(np.int64) + b.offset
    return out


def run_steps(model, theta, X, y, optimizer, steps: int, lr: float, rng, batch: int | None = None,
              regularizer=None, mask=None, stop=None, stop_every: int = 10) -> tuple[int, list[float]]:
    """Train theta (P,) in place for up to `steps` optimizer steps on (X, y) with a fresh state of a copy of
    `optimizer` (the caller's optimizer and state are untouched). Minibatches of `batch` rows drawn from `rng`
    (None: all rows each step); dropout noise from `rng`; regularizer added when given and active.
    `stop(theta) -> bool` is asked every `stop_every` steps. Returns (steps taken, per-step losses)."""
    opt = copy.deepcopy(optimizer)
    state = opt.init(theta)
    grad = np.zeros_like(theta)
    n = len(y)
    reg_on = regularizer is not None and regularizer.active and mask is not None
    losses: list[float] = []

    def loss_grad(t, g, idx=None):
        noise = model.sample_noise(rng, n if idx is None else idx.size)
        loss = float(model.loss_grad(t, g, X, y, idx, noise))
        if reg_on:
            loss += float(regularizer.penalty_grad(t, g, mask))
        return loss

    taken = 0
    if getattr(opt, "full_batch", False):
        while taken < steps:
            count = int(state.count[0])
            got = list(opt.run_epoch(theta, state, lambda t, g: loss_grad(t, g), lr))
            losses += [float(v) for v in got]
            taken += max(1, int(state.count[0]) - count)
            if int(state.count[0]) == count or (stop is not None and stop(theta)):
                break  # converged (no iteration taken) or done
        return taken, losses
    for step in range(steps):
        idx = None if batch is None or batch >= n else rng.choice(n, size=batch, replace=False).astype(np.int64)
        loss = loss_grad(theta, grad, idx)
        losses.append(loss)
        if not math.isfinite(loss):
            break
        opt.apply(theta, grad, state, lr, opt.momentum)
        taken = step + 1
        if stop is not None and taken % stop_every == 0 and stop(theta):
            break
    return taken, losses


# --- the check -----------------------------------------------------------------------------------------------
def _measure(f, theta, i: int, h: float, winners, unit: float = 1.0) -> tuple[float, bool | None, float]:
    """Centered difference of f along coordinate i (notes 1.1), whether a kink was crossed (1.5) and the
    round-off floor of the quotient (~10 ulps of max(|f|, unit) divided by the step)."""
    old = theta[i]
    theta[i] = old + h
    up = theta[i]
    f_plus = f(theta)
    w_plus = winners(theta) if winners is not None else None
    theta[i] = old - h
    down = theta[i]
    f_minus = f(theta)
    w_minus = winners(theta) if winners is not None else None
    theta[i] = old
    numeric = (f_plus - f_minus) / (up - down)  # the step actually taken after rounding
    kink = None if winners is None else not np.array_equal(w_plus, w_minus)
    scale = max(abs(f_plus) + abs(f_minus), 2.0 * unit)
    floor = ROUNDOFF_ULPS * np.finfo(np.float64).eps * scale / (up - down)
    return numeric, kink, floor


def _check_coordinate(f, analytic, theta, i, opts: GradCheckOptions, tol, winners) -> list[Attempt]:
    a = float(analytic[i])
    attempts = []
    for h in [opts.h] + [v for v in opts.retry_h if v != opts.h]:
        numeric, kink, floor = _measure(f, theta, i, h, winners, opts.loss_scale)
        attempts.append(Attempt(h, float(numeric), relative_error(a, float(numeric)), kink, float(floor)))
        if attempts[-1].error <= tol:
            break  # 1.7: retry other steps only while the coordinate fails
    return attempts


def _judge(a: float, attempts: list[Attempt], tol: float, tiny: float) -> tuple[Attempt, str]:
    """Pick the reported attempt and the coordinate's status from its attempts."""
    passing = [t for t in attempts if t.error <= tol]
    if passing:
        return passing[0], "pass"
    clean = [t for t in attempts if not t.kink]
    if not clean:  # every step crossed a kink: the numeric gradient is not exact there (1.5)
        return min(attempts, key=lambda t: t.error), "kink"
    best = min(clean, key=lambda t: t.error)
    if max(abs(a), abs(best.numeric)) < tiny or abs(a - best.numeric) <= best.floor:
        return best, "tiny"  # outside floating point's active range: not resolvable (1.4)
    return best, "fail"


def _check_part(name, title, f, analytic, theta, coords, layout, opts, tol, reason, winners) -> PartResult:
    part = PartResult(name, title, tol, reason)
    for block in layout:
        results = []
        for i in coords[block.name]:
            i = int(i)
            attempts = _check_coordinate(f, analytic, theta, i, opts, tol, winners)
            chosen, status = _judge(float(analytic[i]), attempts, tol, opts.tiny)
            index = np.unravel_index(i - block.offset, block.shape) if block.shape else ()
            results.append(CoordResult(block.name, tuple(int(v) for v in index), i, float(analytic[i]),
                                       chosen.numeric, chosen.error, chosen.h, attempts[0].kink, status,
                                       attempts))
        part.blocks.append(BlockResult(block.name, block.size, results))
    return part


def check_gradients(model, theta, X, y, regularizer=None, mask=None, options=None, *, optimizer=None,
                    lr: float | None = None, rng: np.random.Generator | None = None, seed: int = 0,
                    **overrides) -> GradCheckReport:
    """Gradient check of `model` (any framework.components.model.Model) at theta (P,) on a few rows of X (N, D), y (N,).

    regularizer, mask: a Regularizer and its (P,) mask (the `reg` part checks `penalty_grad` alone, notes
    1.9). options: GradCheckOptions, a dict, or None for the notes' defaults; keyword overrides such as
    `points=2, fixed_noise=False` win. optimizer, lr: for the optional burn-in (1.8), which trains a copy of
    theta on all of (X, y). rng: the check's own Generator (default np.random.default_rng(seed)); it picks
    the datapoints, the coordinates and the dropout noise. Nothing passed in is modified.
    Returns a GradCheckReport (`.passed`, `.failures()`, `str()` for a table).
    """
    start = time.perf_counter()
    opts = make_options(options, **overrides)
    rng = rng if rng is not None else np.random.default_rng(seed)
    model64 = model.with_dtype(np.float64)  # 1.3: float32 round-off alone can give 1e-2 errors
    theta64 = np.array(theta, dtype=np.float64, copy=True)
    X_all = np.asarray(X)
    y_all = np.asarray(y).astype(np.int64)
    if theta64.shape != (model64.layout.size,):
        raise ValueError(f"theta has shape {theta64.shape}, the model's layout needs ({model64.layout.size},)")
    report = GradCheckReport([], dataclasses.asdict(opts), "")
    report.settings.update(model_dtype=str(np.dtype(getattr(model, "dtype", np.float64))), check_dtype="float64")

    # 1.8: leave the random-init regime with a few real optimizer steps on a copy of theta
    if opts.burn_in_steps > 0:
        if optimizer is None:
            report.warnings.append("burn-in requested but no optimizer was given: checked at the given theta.")
        else:
            X64 = np.ascontiguousarray(X_all, dtype=np.float64)
            mask64 = None if mask is None else np.asarray(mask, dtype=np.float64)
            taken, losses = run_steps(model64, theta64, X64, y_all, optimizer, opts.burn_in_steps,
                                      float(lr if lr is not None else optimizer.lr), rng,
                                      batch=opts.burn_in_batch, regularizer=regularizer, mask=mask64)
            report.burn_in = {"steps": taken, "loss_first": losses[0] if losses else float("nan"),
                              "loss_last": losses[-1] if losses else float("nan")}
            if losses and not losses[-1] < losses[0]:
                report.warnings.append(f"burn-in did not lower the loss ({losses[0]:.4g} -> {losses[-1]:.4g}): "
                                       "the check may still be in a degenerate regime (notes 1.8).")

    # 1.6: a few datapoints
    n = min(opts.points, len(y_all))
    rows = np.sort(rng.choice(len(y_all), size=n, replace=False)) if n < len(y_all) else np.arange(n)
    Xc = np.ascontiguousarray(X_all[rows], dtype=np.float64)
    yc = np.ascontiguousarray(y_all[rows])
    coords = sample_coordinates(model64.layout, opts.coords_per_block, rng)
    noise = _Noise(model64, rng, n, opts.fixed_noise)
    scratch = np.zeros_like(theta64)
    scale = opts.loss_scale

    def data_loss(t):
        return scale * float(model64.loss_grad(t, scratch, Xc, yc, None, noise.get()))

    # 1.5: winners of every max/hinge, when the model records them
    winners = None
    kinked = declares_kinks(model64)
    w0 = model64.winners(theta64, Xc, yc, noise.get()) if opts.kinks else None
    if not opts.kinks:
        report.kink_detection = "off (preflight.gradcheck.kinks=false): crossed kinks count as mismatches"
    elif w0 is None:
        report.kink_detection = (f"unavailable: {type(model).__name__}.winners() records no max/hinge "
                                 "outcomes, so a crossed kink would show as a mismatch (notes 1.5)")
    else:
        w0 = np.asarray(w0)
        kinked = w0.size > 0
        report.kink_detection = (f"on ({w0.size} max/hinge outcomes recorded per evaluation)" if kinked else
                                 "on (the objective records no max/hinge: kink-free)")

        def winners(t):
            return np.asarray(model64.winners(t, Xc, yc, noise.get()))
    tol_data = opts.tol_kinks if kinked else opts.tol_smooth
    reason_data = ("objective with kinks, notes 1.2" if kinked else
                   "kink-free objective: 1e-4 would be too high, notes 1.2")
    if noise.present:
        report.notes.append("dropout/noise: " + ("one draw reused by f(x+h), f(x-h) and the analytic gradient "
                                                 "(notes 1.10)" if opts.fixed_noise else
                                                 "REDRAWN for every evaluation (fixed_noise=false): mismatches "
                                                 "are expected (notes 1.10)"))

    reg_penalty = has_penalty(regularizer)
    mask64 = None if mask is None else np.asarray(mask, dtype=np.float64)
    for part in opts.parts:
        if part == "data":
            analytic = np.zeros_like(theta64)
            model64.loss_grad(theta64, analytic, Xc, yc, None, noise.get())
            analytic *= scale
            report.parts.append(_check_part("data", "data loss, reg = 0", data_loss, analytic, theta64, coords,
                                            model64.layout, opts, tol_data, reason_data, winners))
        elif part == "reg":
            title = "regularization alone"
            if not reg_penalty or mask64 is None:
                why = "no regularizer given" if regularizer is None else (
                    "no mask given" if mask64 is None else f"{type(regularizer).__name__} adds no penalty")
                report.parts.append(PartResult("reg", title, opts.tol_kinks, "", skipped=why))
                continue
            strength = opts.reg_strength if opts.reg_strength is not None else regularizer.reg
            if not strength:
                strength = 1.0
            reg = with_strength(regularizer, strength)
            title = f"regularization alone, strength {strength:g}"
            rscratch = np.zeros_like(theta64)

            def reg_loss(t, reg=reg):
                rscratch[:] = 0.0
                return float(reg.penalty_grad(t, rscratch, mask64))

            analytic = np.zeros_like(theta64)
            reg.penalty_grad(theta64, analytic, mask64)
            # regularizers record no winners and may have kinks (L1, max-norm): the kinks tolerance
            report.parts.append(_check_part("reg", title, reg_loss, analytic, theta64, coords, model64.layout,
                                            opts, opts.tol_kinks, "penalty, kinks possible, notes 1.2", None))
        elif part == "total":
            active = reg_penalty and mask64 is not None and regularizer.active
            tscratch = np.zeros_like(theta64)

            def total_loss(t):
                loss = scale * float(model64.loss_grad(t, tscratch, Xc, yc, None, noise.get()))
                if active:
                    tscratch[:] = 0.0
                    loss += float(regularizer.penalty_grad(t, tscratch, mask64))
                return loss

            analytic = np.zeros_like(theta64)
            model64.loss_grad(theta64, analytic, Xc, yc, None, noise.get())
            analytic *= scale
            if active:
                regularizer.penalty_grad(theta64, analytic, mask64)
            strength = regularizer.reg if active else 0.0
            report.parts.append(_check_part("total", f"data + regularization at reg = {strength:g}", total_loss,
                                            analytic, theta64, coords, model64.layout, opts, tol_data,
                                            reason_data, winners))

    # 1.4: raw values near the bottom of the active range
    low = [c for p in report.parts for b in p.blocks for c in b.coords
           if 0 < max(abs(c.analytic), abs(c.numeric)) < opts.tiny]
    unresolved = [c for p in report.parts for b in p.blocks for c in b.coords if c.status == "tiny"]
    if any(c not in low for c in unresolved):
        c = next(c for c in unresolved if c not in low)
        report.warnings.append(
            f"{len(unresolved)} coordinates differ from the numeric gradient by less than the round-off of the "
            f"difference quotient (e.g. {c.block}: analytic {c.analytic:.2e}, numeric {c.numeric:.2e}): their "
            f"gradients are tiny next to the loss value and are not judged (notes 1.4).")
    if low:
        c = low[0]
        report.warnings.append(
            f"{len(low)} coordinates have gradients below {opts.tiny:g} in magnitude (e.g. {c.block}: analytic "
            f"{c.analytic:.2e}, numeric {c.numeric:.2e}); such values are unreliable in floating point: scale "
            f"the loss up towards ~1 (preflight.gradcheck.loss_scale) and check again (notes 1.4).")
    if sum(1 for b in model64.layout if b.name.startswith("W")) >= 4 or len(model64.layout) >= 8:
        report.notes.append("deep net: errors accumulate with depth, so a first-layer error near 1e-2 in a "
                            "10-layer net can still be right while a single function at 1e-2 is wrong (notes 1.2).")
    if any(b.kinks_excused for p in report.parts for b in p.blocks):
        report.notes.append("coordinates marked 'kink crossed' changed a max/hinge winner between x-h and x+h "
                            "at every step tried: their numeric gradient is not exact and they are not judged "
                            "(notes 1.5).")
    report.seconds = time.perf_counter() - start
    return report
