"""Babysitting advice (notes section 3): the options of the `diagnostics:` section and the rules that turn a run's
measurements into readable advice.

Each rule is a plain function of numbers (update ratios, accuracies, unit fractions), so it is tested without
training; the diagnostics of framework.monitoring.builtin measure the numbers during a run and apply the rules, and
framework.monitoring.monitor reports the findings on the console, in TensorBoard (text tag `diagnostics`) and in
summary.json (`diagnostics`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import numpy as np

from framework.core.errors import ConfigError
from framework.core.params import param, plain, section
from framework.core.registry import RegistryError
from framework.monitoring.plugin import DIAGNOSTICS

HEALTHY_RATIO = 1e-3  # notes 3.3: update/weight ratio around 1e-3 is healthy
MIN_FIT_EPOCHS = 5  # train/val accuracies of shorter runs (a coarse search's 1-epoch trials) say nothing of capacity


@dataclass(frozen=True)
class RatioBand:
    """Options of the built-in diagnostic `update_ratio` (flat in `diagnostics:`)."""

    ratio_low: float = param(1e-4, "median update/weight ratio of a weight block below this: lr too low",
                             range="(0, inf]")
    ratio_high: float = param(1e-2, "... above this: lr too high", range="(0, inf]")

    def check(self, prefix: str) -> None:
        """The cross-field rule, run by params.validate after the ranges."""
        if self.ratio_low >= self.ratio_high:
            raise ConfigError(f"{prefix}.ratio_low", self.ratio_low,
                              f"a number below {prefix}.ratio_high ({self.ratio_high:g})")


@dataclass(frozen=True)
class FitLimits:
    """Options of the built-in diagnostic `fit` (flat in `diagnostics:`)."""

    overfit_gap: float = param(0.1, "train acc - val acc above this: overfitting", range="(0, 1]")
    capacity_gap: float = param(0.02, "|train acc - val acc| below this ...", range="(0, 1]")
    capacity_acc: float = param(0.7, "... with train acc below this: too little capacity", range="(0, 1]")


@dataclass(frozen=True)
class UnitLimits:
    """Options of the built-in diagnostic `units` (flat in `diagnostics:`)."""

    dead_fraction: float = param(0.5, "fraction of dead ReLUs / saturated tanh units of a layer above this: bad "
                                      "init or lr", range="(0, 1]")
    saturation: float = param(0.99, "a tanh output with |a| above this counts as saturated", range="(0, 1]")


@dataclass(frozen=True)
class Thresholds(UnitLimits, FitLimits, RatioBand):
    """The flat keys of the `diagnostics:` section of conf/config.yaml: the switch of the advice plus the options
    of the built-in diagnostics (one base class each). Plugin diagnostics' options are sub-sections
    `diagnostics.<name>`, validated with these by `configure`."""

    enabled: bool = param(True, "give diagnostics (TensorBoard text and the console)")

    @classmethod
    def from_cfg(cls, node) -> "Thresholds":
        """Validated thresholds from a config node (missing keys keep their defaults); the plugin diagnostics'
        sub-sections are validated too."""
        return configure(node)[0]


def configure(node) -> tuple[Thresholds, dict[str, object]]:
    """The `diagnostics:` section (a DictConfig, dict or None) validated: (its flat keys as Thresholds,
    {name: validated options} of every registered diagnostic). A built-in's options are read from the flat keys,
    any other's from `diagnostics.<name>` (missing: its defaults). Errors name the full key, e.g.
    `diagnostics.my_check.limit`."""
    values = plain(node)
    entries = {name: DIAGNOSTICS.get(name) for name in DIAGNOSTICS.names()}
    nested = {name for name, e in entries.items() if not getattr(e.factory, "flat_options", False)}
    flat_keys = {f.name for f in dataclasses.fields(Thresholds)}
    for name in sorted(nested & flat_keys):
        raise RegistryError(f"diagnostic {name!r} ({entries[name].module}) has the name of the option "
                            f"diagnostics.{name}: rename the diagnostic.")
    unknown = sorted(set(values) - flat_keys - nested)
    if unknown:
        raise ConfigError(f"diagnostics.{unknown[0]}", values[unknown[0]],
                          "options of diagnostics: " + ", ".join(sorted(flat_keys)) + "; and the sections "
                          "diagnostics.<name> of the registered plugin diagnostics: " +
                          (", ".join(sorted(nested)) or "(none)"))
    thresholds = section(Thresholds, {k: v for k, v in values.items() if k in flat_keys}, "diagnostics")
    options = {}
    for name, entry in entries.items():
        if name in nested:
            sub = values.get(name)
            if sub is not None and not isinstance(sub, dict):
                known = [f.name for f in dataclasses.fields(entry.config_cls)]
                raise ConfigError(f"diagnostics.{name}", sub, f"a section with the options of the diagnostic {name!r} "
                                  f"({', '.join(known) or 'none'}), e.g. diagnostics.{name}.enabled=false")
            options[name] = section(entry.config_cls, sub, f"diagnostics.{name}", f"diagnostic {name!r}")
        else:
            fields = {f.name for f in dataclasses.fields(entry.config_cls)}
            options[name] = entry.config_cls(**{k: getattr(thresholds, k) for k in fields})
    return thresholds, options


@dataclass(frozen=True)
class Finding:
    """One piece of advice. check: a stable id (e.g. 'lr_too_low'); subject: the block or layer, if any;
    value: the measured number the rule judged; notes: the section of the notes it comes from."""

    check: str
    message: str
    notes: str
    subject: str = ""
    value: float | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        if out["value"] is not None and not math.isfinite(out["value"]):
            out["value"] = None
        return out


def short(x: float) -> str:
    """1 significant digit in the notes' style: 3e-6, 0.002 -> 2e-3."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def update_ratio_findings(ratios: dict[str, float], th: RatioBand) -> list[Finding]:
    """ratios: {weight block: median ||applied update|| / ||weights||}. Outside [ratio_low, ratio_high] the
    learning rate is likely wrong for that block (notes 3.3)."""
    out = []
    for block, r in ratios.items():
        if not math.isfinite(r):
            continue
        for side, bad in (("low", r < th.ratio_low), ("high", r > th.ratio_high)):
            if bad:
                out.append(Finding(
                    f"lr_too_{side}",
                    f"learning rate likely too {side} for block {block} (update/weight ratio {short(r)}, "
                    f"healthy ~{short(HEALTHY_RATIO)}; notes 3.3)", "3.3", block, float(r)))
    return out


def divergence_finding(epoch: int, lr: float) -> Finding:
    """The loss exploded (NaN/inf, or past the early-stop multiple): the run stopped as diverged."""
    return Finding("diverged",
                   f"loss exploded and the run stopped as diverged in epoch {epoch} (lr={lr:g}): the learning "
                   "rate is likely far too high; lower it 3-10x (notes 3.1)", "3.1", "", float(lr))


def fit_findings(train_acc: float, val_acc: float, th: FitLimits, lr_suspect: bool = False,
                 epochs: int | None = None) -> list[Finding]:
    """Overfitting when train acc exceeds val acc by more than overfit_gap; too little capacity when val tracks
    train within capacity_gap while train acc stays below capacity_acc (notes 3.2). With `lr_suspect` (the
    update ratios already blame the learning rate) low accuracy is not blamed on capacity. `epochs`: epochs
    trained; a run shorter than MIN_FIT_EPOCHS is not judged (after 1 epoch every model looks too small)."""
    if not (math.isfinite(train_acc) and math.isfinite(val_acc)):
        return []
    if epochs is not None and epochs < MIN_FIT_EPOCHS:
        return []
    gap = train_acc - val_acc
    if gap > th.overfit_gap:
        return [Finding("overfitting",
                        f"train/val accuracy gap {gap:.3f} (train {train_acc:.3f}, val {val_acc:.3f}) exceeds "
                        f"{th.overfit_gap:g}: the model overfits; add regularization (higher reg, dropout) or more "
                        "data (notes 3.2)", "3.2", "", float(gap))]
    if abs(gap) < th.capacity_gap and train_acc < th.capacity_acc and not lr_suspect:
        return [Finding("low_capacity",
                        f"validation accuracy tracks training (gap {gap:.3f}) at low accuracy (train "
                        f"{train_acc:.3f} < {th.capacity_acc:g}): the model has too little capacity; try a bigger "
                        "model (wider or more hidden layers) (notes 3.2)", "3.2", "", float(train_acc))]
    return []


def unit_fractions(activations: dict[str, np.ndarray], kind: "str | dict[str, str] | None",
                   saturation: float = 0.99, channels: dict[str, int] | None = None
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """From hidden activations {layer: (N, H)} on a fixed sample: the fraction of dead units per layer (a ReLU
    or leaky ReLU never positive on any of the N rows) and of saturated units (a tanh with |a| > saturation on
    more than half of the rows). `kind` is the model's one activation or a {layer: kind} map (a layered model
    mixes them; a layer of another or no kind gets neither). channels {layer: C > 0} marks layers whose columns
    are positions x C channels (channels last): a unit is then a channel, over all N rows and positions. Returns
    (dead, saturated); each is empty when it does not apply."""
    dead, saturated = {}, {}
    for layer, a in activations.items():
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
            continue
        C = (channels or {}).get(layer, 0)
        if C and a.shape[1] % C == 0:
            a = a.reshape(-1, C)  # (N * positions, C)
        layer_kind = kind.get(layer) if isinstance(kind, dict) else kind
        if layer_kind in ("relu", "leaky_relu"):
            dead[layer] = float(np.mean(~(a > 0).any(axis=0)))
        elif layer_kind == "tanh":
            saturated[layer] = float(np.mean((np.abs(a) > saturation).mean(axis=0) > 0.5))
    return dead, saturated


def unit_findings(dead: dict[str, float], saturated: dict[str, float], th: UnitLimits, rows: int) -> list[Finding]:
    """More than dead_fraction of a layer's ReLUs dead or tanh units saturated: init or lr (notes 3.4)."""
    out = []
    for layer, f in dead.items():
        if f > th.dead_fraction:
            out.append(Finding("dead_relu",
                               f"{f:.0%} of the ReLUs in {layer} are dead (never active on {rows} validation rows): "
                               "the learning rate is likely too high or the initialization poor (use He init); "
                               "notes 3.4", "3.4", layer, f))
    for layer, f in saturated.items():
        if f > th.dead_fraction:
            out.append(Finding("saturated_tanh",
                               f"{f:.0%} of the tanh units in {layer} are saturated (|a| > {th.saturation:g} on most "
                               f"of {rows} validation rows): the initial weights are too large (use Xavier init) or "
                               "the learning rate is too high; notes 3.4", "3.4", layer, f))
    return out


def as_markdown(findings: list[Finding]) -> str:
    """The findings as a Markdown list for TensorBoard's text dashboard."""
    if not findings:
        return "No problems found (notes 3: update ratios, train/val gap, dead or saturated units)."
    return "\n".join(f"- **{f.check}**: {f.message}" for f in findings)
