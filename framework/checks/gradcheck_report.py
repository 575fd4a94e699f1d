"""Options and results of a gradient check (notes section 1): `GradCheckOptions` (the `preflight.gradcheck` config
group), the relative error and its bands (1.2), and the per-coordinate, per-block and per-part results that make a
`GradCheckReport` (readable `str()`, `to_dict()` for JSON). framework.checks.gradcheck fills them in.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field

from framework.core.params import param, plain, section

PARTS = ("data", "reg", "total")
# Round-off of a loss value: ~10 ulps of max(|f|, loss_scale), since a loss sums many rounded terms and a small
# loss is often a difference of O(1) intermediates (log(1 + tiny) in softmax, margins around 1 in the SVM).
ROUNDOFF_ULPS = 10
BAND_WRONG, BAND_UNEASY, BAND_GOOD = 1e-2, 1e-4, 1e-7  # notes 1.2


@dataclass
class GradCheckOptions:
    """Options of the gradient check (config group `preflight.gradcheck`); notes item in each help text."""

    points: int = param(3, "datapoints in the check (notes 1.6: 2-3 are enough and cross fewer kinks)",
                        range="[1, inf)")
    coords_per_block: int = param(10, "coordinates sampled from every parameter block, all of a smaller block "
                                      "(notes 1.11: flat random sampling may never hit the biases)",
                                  range="[1, inf)")
    h: float = param(1e-5, "step of the centered difference (notes 1.1, 1.7)", range="(0, 1)")
    retry_h: list[float] = param([1e-4, 1e-6, 1e-7], "steps tried on a coordinate that fails at h; the best "
                                                      "is reported (notes 1.7)", range="(0, 1)")
    tol_kinks: float = param(1e-4, "largest passing relative error for objectives with kinks: ReLU, hinge "
                                   "(notes 1.2)", range="(0, 1]")
    tol_smooth: float = param(1e-6, "largest passing relative error for kink-free objectives such as "
                                    "tanh/softmax, where 1e-4 is too high (notes 1.2; < 1e-7 is good)",
                              range="(0, 1]")
    kinks: bool = param(True, "detect crossed kinks through model.winners (notes 1.5)")
    fixed_noise: bool = param(True, "draw dropout noise once and reuse it for f(x+h), f(x-h) and the analytic "
                                    "gradient (notes 1.10); false redraws per evaluation (demonstration only)")
    burn_in_steps: int = param(0, "optimizer steps on the training data before the check, to leave the "
                                  "degenerate random-init regime (notes 1.8; 0 = check at the given theta)",
                               range="[0, inf)")
    burn_in_batch: int = param(32, "examples per burn-in step", range="[1, inf)")
    reg_strength: typing.Optional[float] = param(
        1.0, "strength for the regularization-alone check, large enough to matter (notes 1.9); null = the "
             "regularizer's own strength", range="(0, inf)")
    parts: list[str] = param(["data", "reg"], "objectives checked in order: data (loss with reg = 0), reg "
                                              "(penalty alone), total (data + reg at the run's strength; notes "
                                              "1.9 warns the reg term can hide or swamp errors)", choices=PARTS)
    tiny: float = param(1e-10, "raw gradient magnitudes below this are outside floating point's active range: "
                               "flagged and not judged (notes 1.4)", range="[0, 1)")
    loss_scale: float = param(1.0, "multiply the data loss by this during the check to lift tiny gradients "
                                   "towards ~1 (notes 1.4)", range="(0, inf)")
    worst: int = param(3, "worst coordinates listed per block in the report", range="[0, inf)")


def make_options(options=None, **overrides) -> GradCheckOptions:
    """GradCheckOptions from an instance, a dict (config node) or defaults, with keyword overrides, validated
    (a bad value raises ConfigError naming `preflight.gradcheck.<field>`)."""
    values = dataclasses.asdict(options) if isinstance(options, GradCheckOptions) else plain(options)
    values.update(overrides)
    if isinstance(values.get("parts"), str):
        values["parts"] = [values["parts"]]
    return section(GradCheckOptions, values, "preflight.gradcheck", "the gradient check")


def relative_error(a: float, n: float) -> float:
    """|a - n| / max(|a|, |n|), and 0 when both are exactly zero (notes 1.2)."""
    if a == 0.0 and n == 0.0:
        return 0.0
    return abs(a - n) / max(abs(a), abs(n))


def band(error: float) -> str:
    """The notes' name for a relative error (1.2)."""
    if not math.isfinite(error) or error > BAND_WRONG:
        return "wrong"
    if error > BAND_UNEASY:
        return "uneasy"
    if error >= BAND_GOOD:
        return "ok"
    return "good"


# --- results ---------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    """One finite-difference measurement of one coordinate."""

    h: float
    numeric: float
    error: float
    kink: bool | None  # winners changed between x+h and x-h (None: not known)
    floor: float = 0.0  # round-off of the difference quotient: |a - n| below it cannot be resolved (1.4)


@dataclass
class CoordResult:
    """One checked coordinate: `status` is pass | fail | kink (crossed, not judged) | tiny (not judged)."""

    block: str
    index: tuple  # position inside the block's shape
    flat: int  # position in theta (P,)
    analytic: float
    numeric: float
    error: float
    h: float
    kink: bool | None  # kink crossed at the first h
    status: str
    attempts: list[Attempt] = field(default_factory=list)

    def where(self) -> str:
        return f"{self.block}[{', '.join(map(str, self.index))}]"

    def describe(self) -> str:
        where = self.where()
        extra = {"kink": "  kink crossed", "tiny": "  not resolvable (notes 1.4)"}.get(self.status, "")
        return (f"{where:<14} analytic {self.analytic: .6e}  numeric {self.numeric: .6e}  "
                f"rel err {self.error:.2e}  h={self.h:g}{extra}")


@dataclass
class BlockResult:
    name: str
    size: int
    coords: list[CoordResult]

    @property
    def judged(self) -> list[CoordResult]:
        return [c for c in self.coords if c.status in ("pass", "fail")]

    @property
    def worst_error(self) -> float:
        judged = self.judged
        return max(c.error for c in judged) if judged else float("nan")

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.coords)

    @property
    def kinks_crossed(self) -> int:
        return sum(1 for c in self.coords if c.kink)

    @property
    def kinks_excused(self) -> int:
        return sum(1 for c in self.coords if c.status == "kink")

    @property
    def tiny(self) -> int:
        return sum(1 for c in self.coords if c.status == "tiny")

    def worst(self, k: int) -> list[CoordResult]:
        """The k coordinates with the largest relative errors, judged ones (pass/fail) first."""
        def key(c):
            return (c.status not in ("pass", "fail"), -c.error if math.isfinite(c.error) else -math.inf)
        return sorted(self.coords, key=key)[:k]

    def to_dict(self, k: int) -> dict:
        err = self.worst_error
        return {"block": self.name, "size": self.size, "checked": len(self.coords),
                "worst_rel_error": err if math.isfinite(err) else None,
                "band": band(err) if math.isfinite(err) else None, "passed": self.passed,
                "kinks_crossed": self.kinks_crossed, "kinks_excused": self.kinks_excused, "tiny": self.tiny,
                "worst": [{"index": list(c.index), "analytic": c.analytic, "numeric": c.numeric,
                           "rel_error": c.error, "h": c.h, "kink": c.kink, "status": c.status}
                          for c in self.worst(k)]}


@dataclass
class PartResult:
    """The check of one objective (data loss, regularization alone, or both)."""

    name: str
    title: str
    tolerance: float
    tolerance_reason: str
    blocks: list[BlockResult] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is not None or all(b.passed for b in self.blocks)


@dataclass
class GradCheckReport:
    """Result of `check_gradients`: per part and block, the worst relative errors, kinks and verdicts."""

    parts: list[PartResult]
    settings: dict
    kink_detection: str
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    burn_in: dict | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parts)

    def part(self, name: str) -> PartResult:
        return next(p for p in self.parts if p.name == name)

    def failures(self) -> list[tuple[str, str, float]]:
        """(part, block, worst relative error) of every failing block."""
        return [(p.name, b.name, max(c.error for c in b.coords if c.status == "fail"))
                for p in self.parts if p.skipped is None for b in p.blocks if not b.passed]

    @property
    def kinks_crossed(self) -> int:
        return sum(b.kinks_crossed for p in self.parts for b in p.blocks)

    def worst(self) -> tuple[str, str, float]:
        """(part, block, error) of the largest judged relative error overall."""
        best = ("", "", 0.0)
        for p in self.parts:
            for b in p.blocks:
                e = b.worst_error
                if math.isfinite(e) and e >= best[2]:
                    best = (p.name, b.name, e)
        return best

    def summary(self) -> str:
        """One line: verdict, worst error, failing blocks, kinks."""
        part, block, err = self.worst()
        text = f"worst rel err {err:.1e} ({part}/{block})" if block else "no coordinate judged"
        fails = self.failures()
        if fails:
            text = "wrong gradient in " + ", ".join(f"{p}/{b} (rel err {e:.1e})" for p, b, e in fails)
        if self.kinks_crossed:
            text += f"; {self.kinks_crossed} kinks crossed"
        return text

    def to_dict(self) -> dict:
        k = self.settings.get("worst", 3)
        return {"passed": self.passed, "settings": self.settings, "kink_detection": self.kink_detection,
                "warnings": self.warnings, "notes": self.notes, "burn_in": self.burn_in, "seconds": self.seconds,
                "parts": [{"name": p.name, "title": p.title, "tolerance": p.tolerance,
                           "tolerance_reason": p.tolerance_reason, "skipped": p.skipped, "passed": p.passed,
                           "blocks": [b.to_dict(k) for b in p.blocks]} for p in self.parts]}

    def __str__(self) -> str:
        s = self.settings
        lines = [f"Gradient check: {'PASSED' if self.passed else 'FAILED'}  (float64, centered difference, "
                 f"h={s['h']:g}, {s['points']} datapoints, <= {s['coords_per_block']} coords per block, "
                 f"{self.seconds * 1e3:.1f} ms)",
                 f"  kink detection: {self.kink_detection}"]
        if self.burn_in:
            b = self.burn_in
            lines.append(f"  burn-in: {b['steps']} steps, loss {b['loss_first']:.4g} -> {b['loss_last']:.4g}")
        k = s.get("worst", 3)
        for p in self.parts:
            if p.skipped is not None:
                lines.append(f"  [{p.title}] skipped: {p.skipped}")
                continue
            lines.append(f"  [{p.title}] pass if rel err <= {p.tolerance:g} ({p.tolerance_reason})")
            lines.append(f"    {'block':<8}{'checked':>7}  {'worst rel err':>13}  {'band':<7}{'kinks':>5}{'tiny':>5}"
                         f"  {'verdict':<7}  worst coordinate: analytic / numeric")
            for b in p.blocks:
                err = b.worst_error
                worst = b.worst(max(k, 1))
                lines.append(f"    {b.name:<8}{len(b.coords):>7}  "
                             f"{(f'{err:.2e}' if math.isfinite(err) else '-'):>13}  "
                             f"{(band(err) if math.isfinite(err) else '-'):<7}{b.kinks_crossed:>5}{b.tiny:>5}  "
                             f"{'pass' if b.passed else 'FAIL':<7}  "
                             + (f"{worst[0].where()} {worst[0].analytic:.6e} / {worst[0].numeric:.6e}"
                                if worst else ""))
                # 1.4: raw values of the failing coordinates, then of those excused by a crossed kink (1.5)
                flagged = sorted((c for c in b.coords if c.status in ("fail", "kink")),
                                 key=lambda c: (c.status != "fail", -c.error))
                lines += [f"      {c.describe()}" for c in flagged[:k]]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
