"""Members and what the strategies share: Member (one set of weights of one checkpoint, scored on the shared
split), the checks that members fit together (same data, same architecture, config differences) and Context, which
opens and scores every member once and makes Ensembles of them.

Evaluation data. Every member is evaluated on ONE validation and test split, rebuilt deterministically from the
first member's data config (dataset, fractions, preprocessing, data.split_seed). Members must share that data
config, their classes and their training-split preprocessing (mean, scale), else a DataError: a member trained
on another split may have trained on the rows the ensemble is tested on. The run's `seed` does not move the split
(data.split_seed does), so runs that differ only in seed share one split.
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np

from framework.core.errors import DataError
from framework.engine.metrics import accuracy
from framework.engine.settings import component_config, flat_hparams
from framework.ensemble.errors import NotApplicable
from framework.ensemble.predictor import Ensemble, Part
from framework.ensemble.sources import RunRef
from framework.ensemble.timing import TimingConfig, time_calls

WEIGHTS = {"best": "best", "last": "raw", "ema": "ema"}  # the `weights` option -> Checkpoint.weights(use)
# Top-level config keys that do not change what a run learns: ignored when seed runs are compared.
NOT_TRAINING_KEYS = ("checkpoint", "tensorboard", "diagnostics", "monitor", "preflight", "resume", "hydra")


@dataclass
class Member:
    """One set of weights of one checkpoint, scored on the shared split."""

    label: str
    file: pathlib.Path
    use: str  # raw | ema | best: which weights of the file
    ckpt: object  # framework.io.predictor.Checkpoint
    theta: np.ndarray  # (P,) in the run's dtype
    val_acc: float = math.nan
    test_acc: float = math.nan
    seconds: float | None = None  # time to predict the val+test rows (s), measured on demand

    @property
    def cfg(self):
        return self.ckpt.cfg


def val_key(m: Member) -> float:
    """Sort key: validation accuracy, NaN (no validation rows) last."""
    return m.val_acc if math.isfinite(m.val_acc) else -1.0


def _flat(cfg, prefix: str = "") -> dict:
    """{dotted key: scalar or list text} of a config (or of its keys under `prefix`)."""
    flat = flat_hparams(cfg)
    return {k: v for k, v in flat.items() if not prefix or k == prefix or k.startswith(prefix + ".")}


def _differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def describe_differences(diffs, first: str, limit: int = 6) -> str:
    """The first `limit` (key, value of `first`, other value) differences as one readable clause."""
    text = "; ".join(f"{k}={vb!r} where {first} has {va!r}" for k, va, vb in diffs[:limit])
    return text + (f" (and {len(diffs) - limit} more keys)" if len(diffs) > limit else "")


def config_differences(a, b) -> list[tuple[str, object, object]]:
    """(key, value in a, value in b) for every config key that differs and changes what a run learns (keys under
    NOT_TRAINING_KEYS, such as checkpoint or tensorboard settings, are ignored)."""
    fa, fb = ({k: v for k, v in _flat(c).items() if k.split(".")[0] not in NOT_TRAINING_KEYS} for c in (a, b))
    return _differences(fa, fb)


def _same(a, b) -> bool:
    """Equal preprocessing vectors (to rounding: the same split computed by another NumPy build)."""
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=1e-12)


def check_same_data(ref: Member, m: Member) -> None:
    """DataError unless `m` was trained on the same dataset, split, preprocessing and classes as `ref`."""
    diffs = _differences(_flat(ref.cfg, "data"), _flat(m.cfg, "data"))
    why = ""
    if diffs:
        why = f"its data config differs: {describe_differences(diffs, ref.label)}"
    elif (m.ckpt.num_classes, m.ckpt.input_dim) != (ref.ckpt.num_classes, ref.ckpt.input_dim):
        why = (f"it has {m.ckpt.num_classes} classes and {m.ckpt.input_dim} features, the first member "
               f"{ref.ckpt.num_classes} and {ref.ckpt.input_dim}")
    elif not (_same(m.ckpt.mean, ref.ckpt.mean) and _same(m.ckpt.scale, ref.ckpt.scale)):
        why = "its training-split preprocessing (mean, scale) differs, so it was trained on another split"
    if why:
        raise DataError(f"Member {m.label} cannot join an ensemble with {ref.label}: {why}. All members must share "
                        "one dataset, split (data.split_seed), preprocessing and classes: the ensemble is scored "
                        f"on the validation and test split rebuilt from the first member's config ({ref.label}), "
                        "and a member trained on another split may have trained on those rows.")


def check_same_architecture(members: list[Member]) -> None:
    """NotApplicable unless all members have the same parameter layout (block names and shapes) and dtype: then
    their weights can average. Keys that shape no parameter (model.keep_prob, the activation...) do not matter
    here; the soup predicts with the first member's model config."""
    ref = members[0]
    for m in members[1:]:
        if m.ckpt.layout != ref.ckpt.layout or m.theta.dtype != ref.theta.dtype:
            diffs = _differences(_flat(ref.cfg, "model"), _flat(m.cfg, "model"))
            what = (describe_differences(diffs, ref.label) + "; " if diffs else "") + (
                f"dtype {m.theta.dtype} vs {ref.theta.dtype}; " if m.theta.dtype != ref.theta.dtype else "")
            raise NotApplicable(
                f"Cannot average the weights of {m.label} and {ref.label}: different architectures ({what}"
                f"layouts {m.ckpt.layout} and {ref.ckpt.layout}). A weight soup needs one parameter layout, and "
                "works best for members that share their initialization (checkpoints of one run, or runs with the "
                "same seed); combine the predictions of different architectures instead (strategy=topk or "
                "seeds).")


class Context:
    """What the strategies share: the runs, the shared evaluation split (built from the first run's member) and
    every member opened so far (each checkpoint is opened and scored once)."""

    def __init__(self, runs: list[RunRef], weights: str = "best", combine: str = "mean_prob",
                 timing: TimingConfig | None = None, options: dict | None = None, sources=None):
        self.runs, self.weights, self.combine = runs, weights, combine
        self.timing = timing or TimingConfig()
        self.options = options or {}  # validated configs of the strategies, by name
        self.sources = list(sources or [])  # as the user named them: recorded in every ensemble file
        self._members: dict = {}
        self.reference: Member | None = None
        self.splits = None
        self.run_member(runs[0])  # the first run's member defines the evaluation split

    def _set_reference(self, m: Member) -> None:
        from framework.engine.settings import load_splits

        name, opts = component_config(m.cfg.data)
        splits = load_splits(name, opts, np.float64)
        if not (_same(splits.mean, m.ckpt.mean) and _same(splits.scale, m.ckpt.scale)):
            raise DataError(f"The dataset {name!r} rebuilt from the config of {m.label} differs from the one it was "
                            "trained on (its training-split mean differs): the data or the split code changed "
                            "since, so its test rows may overlap its training rows.")
        if len(splits.y_val) == 0:
            raise DataError(f"The dataset {name!r} of {m.label} has no validation rows: ensembles select by "
                            "validation accuracy.")
        self.reference, self.splits = m, splits
        self.X_eval = np.concatenate([splits.X_val, splits.X_test])  # the rows whose prediction time is the cost

    def member(self, file, use: str, label: str) -> Member:
        """The member `use` weights of checkpoint `file`, scored on the shared split (cached)."""
        from framework.io.predictor import load

        file = pathlib.Path(file)
        key = (str(file.resolve()), use)
        if key not in self._members:
            ckpt = load(file)
            if use == "ema" and ckpt.ema_params is None:
                raise NotApplicable(f"{label} kept no EMA weights (its run had ema.decay=0).")
            m = Member(label, file, use, ckpt, ckpt.weights(use))
            if self.reference is None:
                self._set_reference(m)
            else:
                check_same_data(self.reference, m)
            s = self.splits
            m.val_acc = accuracy(m.ckpt.model.scores(m.theta, s.X_val), s.y_val)
            m.test_acc = accuracy(m.ckpt.model.scores(m.theta, s.X_test), s.y_test)
            self._members[key] = m
        return self._members[key]

    def run_member(self, run: RunRef) -> Member:
        """The run's member with the `weights` option's weights (best epoch's by default)."""
        label = run.label if self.weights == "best" else f"{run.label}:{self.weights}"
        return self.member(run.weights_file(), WEIGHTS[self.weights], label)

    def best_run(self) -> RunRef:
        """The run whose member has the best validation accuracy (the first on ties)."""
        vals = [val_key(self.run_member(r)) for r in self.runs]
        return self.runs[max(range(len(vals)), key=lambda i: (vals[i], -i))]

    def val_accuracy(self, model, theta) -> float:
        return accuracy(model.scores(theta, self.splits.X_val), self.splits.y_val)

    def ensemble(self, name: str, strategy: str, members: list[Member], combine: str | None = None) -> Ensemble:
        """A prediction ensemble of `members`."""
        parts = [Part(m.label, f"{m.file}:{m.use}", m.cfg, m.theta, m.ckpt.row_shape) for m in members]
        return self._make(name, strategy, combine or self.combine, parts)

    def single(self, name: str, strategy: str, like: Member, theta, label: str, source: str) -> Ensemble:
        """A one-model ensemble holding `theta` (averaged weights) in the architecture of `like`."""
        return self._make(name, strategy, "mean_prob", [Part(label, source, like.cfg, theta, like.ckpt.row_shape)])

    def _make(self, name, strategy, combine, parts) -> Ensemble:
        ref = self.reference.ckpt
        return Ensemble(name, strategy, combine, parts, num_classes=ref.num_classes, input_dim=ref.input_dim,
                        mean=ref.mean, scale=ref.scale, data_cfg=self.reference.cfg.data,
                        image_shape=ref.image_shape, settings={"sources": self.sources, "weights": self.weights})

    def relative_cost(self, fn, members: list[Member]) -> float | None:
        """Time of fn() relative to the mean time of one of `members` predicting the val+test rows (timed
        round-robin with them); None with timing.repeats=0. Records each member's own time."""
        t = self.timing
        if t.repeats == 0:
            return None
        times = time_calls([fn] + [lambda m=m: m.ckpt.model.scores(m.theta, self.X_eval) for m in members],
                           t.repeats, t.min_seconds)
        for m, seconds in zip(members, times[1:]):
            m.seconds = seconds if m.seconds is None else min(m.seconds, seconds)
        return times[0] / float(np.mean(times[1:]))
