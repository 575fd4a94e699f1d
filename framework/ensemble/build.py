"""Model ensembles (notes 6): combine trained runs or checkpoints into one predictor, compare members and ensembles
on one shared validation/test split, save each ensemble as one HDF5 file, optionally distill one into a student.

    python -m framework.ensemble 'source=[<run or sweep folder>, ...]' strategy=seeds|topk|snapshots|ema|soup|all

Strategies (registry STRATEGIES; a plugin adds one with @STRATEGIES.register("name", config=Dataclass)):
  seeds      runs that differ only in `seed` (6.2); their configs are compared key by key
  topk       the k runs with the best validation accuracy, e.g. the trials of a sweep (6.3)
  snapshots  several checkpoints of one run (6.4): under cosine warm restarts the ends of the cycles (the minima),
             else the last k epochs
  ema        the running average of a run's weights next to its raw weights (6.5)
  soup       weight averaging of checkpoints of one architecture: uniform, and greedy (members in order of
             validation accuracy, each kept only if the averaged weights do not lose validation accuracy)
Prediction ensembles combine member scores by `combine`: mean_prob (mean of the softmax probabilities, default),
mean_logits (softmax of the mean scores) or vote (majority of the members' classes; ties go to the class with the
higher mean probability).

Evaluation data. Every member is evaluated on ONE validation and test split, rebuilt deterministically from the
first member's data config (dataset, fractions, preprocessing, data.split_seed). Members must share that data
config, their classes and their training-split preprocessing (mean, scale), else a DataError: a member trained
on another split may have trained on the rows the ensemble is tested on. The run's `seed` does not move the split
(data.split_seed does), so runs that differ only in seed share one split.

Selection (top-k, greedy soup, snapshots by score, the best run for snapshots/ema) uses validation accuracy only;
test accuracy is reported, never used to choose.

Ensemble file (root attribute format "framework-ensemble", format_version 1; written atomically, no pickle):
    /               attrs format, format_version, framework_version, created, name, strategy, combine,
                    config (YAML: data, dtype, ensemble settings), metrics (JSON), num_classes, input_dim,
                    image_shape (JSON)
    data/mean       (D,) float64 training-split mean shared by all members; data/scale (D,) likewise
    members/<iii>   one group per member: attrs label, source, model, dtype, config (the member's training config
                    as YAML, its model is rebuilt from it), layout (JSON); one dataset per parameter block
                    (W1 (D, H), b1 (H,), ...). A soup or an EMA model holds one member: the averaged weights.
`framework.load(path)` opens it as an `Ensemble`, which offers the methods of a Checkpoint (predict, predict_proba,
scores, transform, weights, cfg, num_classes, ...); `python -m framework.evaluate checkpoint=<file>` scores it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import re
import time
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from framework.io.checkpoint import Predictor
from framework.core.errors import ConfigError, DataError, FrameworkError
from framework.kernels.dense import jit
from framework.core.layout import Layout
from framework.engine.metrics import accuracy
from framework.components.model import Model
from framework.core.params import param, validate
from framework.core.safe_config import load_saved_config
from framework.core.registry import MODELS, SCHEDULES, Registry
from framework.engine.train import component_config, flat_hparams, write_json_atomic
from framework.core.files import save_figure_atomic, write_text_atomic

log = logging.getLogger("framework")

FORMAT = "framework-ensemble"  # root attribute `format` of an ensemble file
FORMAT_VERSION = 1  # bump on incompatible layout changes; readers refuse newer versions
COMBINES = ("mean_prob", "mean_logits", "vote")
WEIGHTS = {"best": "best", "last": "raw", "ema": "ema"}  # the `weights` option -> Checkpoint.weights(use)
# Top-level config keys that do not change what a run learns: ignored when seed runs are compared.
NOT_TRAINING_KEYS = ("checkpoint", "tensorboard", "diagnostics", "monitor", "preflight", "resume", "hydra")
ORDER = ("seeds", "topk", "snapshots", "ema", "soup")  # strategy=all runs these first, then plugins by name
TINY = np.finfo(np.float64).tiny  # floor of combined probabilities before the log (keeps scores finite)


class EnsembleError(FrameworkError):
    """Members cannot form the requested ensemble, or an ensemble file is missing, damaged or not ours."""


class NotApplicable(EnsembleError):
    """The sources do not fit a strategy; strategy=all lists it as skipped with this message."""


# ----------------------------------------------------------------------------------------------------------------
# combining predictions
# ----------------------------------------------------------------------------------------------------------------
def softmax(scores, T: float = 1.0) -> np.ndarray:
    """Row softmax of scores (N, C) / T, float64."""
    s = np.asarray(scores, dtype=np.float64) / T
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@jit
def combine_kernel(stack, rule, T, out):
    """Ensemble probabilities out (N, C) float64 from the member scores stack (M, N, C) at temperature T.
    rule 0 mean_prob: mean_i softmax(s_i / T); 1 mean_logits: softmax(mean_i s_i / T); 2 vote: (votes +
    mean_prob) / (M + 1), votes[n, c] the number of members whose class for row n is c (the mean probability,
    < 1, only breaks ties between equal vote counts). Stable: every softmax shifts by its row max."""
    M, N, C = stack.shape
    inv_t = 1.0 / T
    for n in range(N):
        for c in range(C):
            out[n, c] = 0.0
        if rule == 1:
            for i in range(M):
                for c in range(C):
                    out[n, c] += stack[i, n, c]
            m = out[n, 0]
            for c in range(1, C):
                m = max(m, out[n, c])
            total = 0.0
            for c in range(C):
                out[n, c] = np.exp((out[n, c] - m) * inv_t / M)
                total += out[n, c]
            for c in range(C):
                out[n, c] /= total
            continue
        for i in range(M):
            best = 0
            for c in range(1, C):
                if stack[i, n, c] > stack[i, n, best]:
                    best = c
            m = stack[i, n, best]
            total = 0.0
            for c in range(C):
                total += np.exp((stack[i, n, c] - m) * inv_t)
            for c in range(C):
                out[n, c] += np.exp((stack[i, n, c] - m) * inv_t) / total / M
            if rule == 2:
                out[n, best] += 1.0
        if rule == 2:
            for c in range(C):
                out[n, c] /= M + 1


def combine_proba(member_scores: list, rule: str, T: float = 1.0) -> np.ndarray:
    """Ensemble class probabilities (N, C) float64 from M members' scores (each (N, C)) by `rule` (one of
    COMBINES) at temperature T; see combine_kernel."""
    stack = np.stack([np.asarray(s, dtype=np.float64) for s in member_scores])
    out = np.empty(stack.shape[1:])
    combine_kernel(stack, COMBINES.index(rule), float(T), out)
    return out


class EnsembleModel(Model):
    """M member models over one flat parameter vector (blocks m0.W1, m0.b1, ..., m1.W1, ...) whose scores
    combine the members'. Prediction only: an ensemble is trained through its members."""

    def __init__(self, models: list[Model], combine: str = "mean_prob"):
        if combine not in COMBINES:
            raise ConfigError("combine", combine, ", ".join(COMBINES))
        super().__init__({"combine": combine})
        self.models, self.combine = list(models), combine
        first = self.models[0]
        self.input_dim, self.num_classes = first.input_dim, first.num_classes
        self.dtype = np.result_type(*[m.dtype for m in self.models])
        self.layout = Layout([(f"m{i}.{b.name}", b.shape, b.decay) for i, m in enumerate(self.models)
                              for b in m.layout])
        self.offsets = np.cumsum([0] + [m.layout.size for m in self.models])
        self.loss_kind = first.loss_kind if len(self.models) == 1 else "softmax"

    def member_scores(self, theta, X) -> list[np.ndarray]:
        """Each member's scores (N, C) on preprocessed X (N, D)."""
        return [m.scores(theta[a:b].astype(m.dtype, copy=False), X)
                for m, a, b in zip(self.models, self.offsets[:-1], self.offsets[1:])]

    def scores(self, theta, X):
        """(N, C): a single member's own scores; the mean scores (mean_logits); else the log of the combined
        probabilities, so that softmax(scores) gives them back and the softmax loss is the ensemble's NLL."""
        parts = self.member_scores(theta, X)
        if len(parts) == 1:
            return parts[0]
        if self.combine == "mean_logits":
            return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in parts]), axis=0)
        return np.log(np.maximum(combine_proba(parts, self.combine), TINY))

    def predict_proba(self, theta, X) -> np.ndarray:
        """The combined probabilities (N, C), float64 (not a softmax of `scores`)."""
        return self.proba(theta, X)

    def proba(self, theta, X, T: float = 1.0) -> np.ndarray:
        """Class probabilities (N, C) float64 at temperature T (T > 1 softens them: distillation targets)."""
        parts = self.member_scores(theta, X)
        return combine_proba(parts, self.combine if len(parts) > 1 else "mean_prob", T)


# ----------------------------------------------------------------------------------------------------------------
# the ensemble as a predictor (the object framework.load returns for an ensemble file)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Part:
    """One member inside an ensemble: its training config (its model is rebuilt from it) and weights (P_i,)."""

    label: str
    source: str
    cfg: DictConfig
    theta: np.ndarray


class Ensemble(Predictor):
    """Members' models combined into one predictor, with the methods of a framework.checkpoint.Checkpoint.
    X given to predict/predict_proba/scores are raw features (N, D) or images (N, ...): the members' shared
    training-split preprocessing is applied here. `use` must be "raw": a file holds one set of weights per member
    (which ones was chosen when the ensemble was built)."""

    kind = "ensemble"

    def __init__(self, name: str, strategy: str, combine: str, parts: list[Part], *, num_classes: int,
                 input_dim: int, mean, scale, data_cfg, image_shape=None, metrics=None, settings=None, path=None):
        if not parts:
            raise EnsembleError(f"ensemble {name!r} has no members")
        self.name, self.strategy, self.combine, self.parts = name, strategy, combine, list(parts)
        self.num_classes, self.input_dim = int(num_classes), int(input_dim)
        self.image_shape = tuple(image_shape) if image_shape else None
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.metrics = dict(metrics or {})
        self.path = pathlib.Path(path) if path else None
        models = []
        for part in self.parts:
            model_name, opts = component_config(part.cfg.model)
            model = MODELS.build(model_name, **opts).setup(self.input_dim, self.num_classes, part.theta.dtype)
            if model.layout.size != part.theta.size:
                raise EnsembleError(f"member {part.label!r}: its model {model_name} {model.layout} needs "
                                    f"{model.layout.size} parameters, the weights have {part.theta.size}.")
            models.append(model)
        self.model = EnsembleModel(models, combine)
        self.layout = self.model.layout
        self.dtype = self.model.dtype
        self.params = np.concatenate([p.theta.astype(self.dtype, copy=False) for p in self.parts])
        data = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else data_cfg
        self.cfg = OmegaConf.create({"data": data, "dtype": str(self.dtype), "ensemble": {
            "name": name, "strategy": strategy, "combine": combine, "members": [p.label for p in self.parts],
            **dict(settings or {})}})
        names = sorted({component_config(p.cfg.model)[0] for p in self.parts})
        self.model_name = f"ensemble {name}: {len(self.parts)} x {'/'.join(names)}" + (
            f", {combine}" if len(self.parts) > 1 else "")
        self.info = {"path": self.path, "dataset": data.get("name"), "format_version": FORMAT_VERSION}
        self.epoch = self.step = None  # an ensemble has no single training position
        self.history: dict = {}

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.parts]

    def weights(self, use: str = "raw") -> np.ndarray:
        """The (P,) concatenated member weights (blocks m0.W1, ...)."""
        if use != "raw":
            raise ConfigError("use", use, "raw: an ensemble file holds one set of weights per member, chosen when "
                                          "the ensemble was built (python -m framework.ensemble weights=...)")
        return self.params

    def member_proba(self, X) -> list[np.ndarray]:
        """Each member's softmax probabilities (N, C)."""
        return [softmax(s) for s in self.model.member_scores(self.params, self.transform(X))]

    def __repr__(self):
        return (f"Ensemble({self.name}: {len(self.parts)} members, {self.combine}, P={self.layout.size}, "
                f"val_acc {self.metrics.get('val_acc') or float('nan'):.4f})")


def _json_safe(value):
    """NaN/inf -> None recursively (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def save_ensemble(ens: Ensemble, path) -> pathlib.Path:
    """Write `ens` to `path` atomically (temp file in the same folder, fsync, rename; see the module doc)."""
    import h5py

    import framework
    from framework.io.checkpoint import _finish_atomic, _tmp_name

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            a = f.attrs
            a["format"], a["format_version"] = FORMAT, np.int64(FORMAT_VERSION)
            a["framework_version"] = framework.__version__
            a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            a["name"], a["strategy"], a["combine"] = ens.name, ens.strategy, ens.combine
            a["config"] = OmegaConf.to_yaml(ens.cfg)
            a["metrics"] = json.dumps(_json_safe(ens.metrics))
            a["num_classes"], a["input_dim"] = np.int64(ens.num_classes), np.int64(ens.input_dim)
            a["image_shape"] = json.dumps(list(ens.image_shape) if ens.image_shape else None)
            data = f.create_group("data")
            data.create_dataset("mean", data=ens.mean)
            data.create_dataset("scale", data=ens.scale)
            members = f.create_group("members", track_order=True)
            for i, (part, model) in enumerate(zip(ens.parts, ens.model.models)):
                g = members.create_group(f"{i:03d}", track_order=True)
                g.attrs["label"], g.attrs["source"] = part.label, part.source
                g.attrs["model"] = component_config(part.cfg.model)[0]
                g.attrs["dtype"] = str(part.theta.dtype)
                g.attrs["config"] = OmegaConf.to_yaml(part.cfg)
                g.attrs["layout"] = json.dumps(model.layout.describe())
                for block in model.layout:
                    g.create_dataset(block.name, data=part.theta[block.offset:block.stop].reshape(block.shape))
        _finish_atomic(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    ens.path = path
    ens.info["path"] = path
    return path


def is_ensemble_file(path) -> bool:
    """True when `path` is an HDF5 file whose root attribute says it is an ensemble (never raises)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return False
    try:
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            return f.attrs.get("format") == FORMAT
    except Exception:  # unreadable or not HDF5: framework.checkpoint.load reports what is wrong with it
        return False


def load_ensemble(path) -> Ensemble:
    """Open an ensemble file for prediction. Raises EnsembleError for files that are missing, damaged, not
    ensembles or newer than this framework."""
    import h5py

    from framework.io.checkpoint import _get_blocks, _numeric, _str_attr

    path = pathlib.Path(path)
    if not path.is_file():
        raise EnsembleError(f"Ensemble file {path} does not exist.")
    try:
        f = h5py.File(path, "r", locking=False)
    except (OSError, ValueError) as exc:
        raise EnsembleError(f"{path} is not a readable HDF5 file (truncated, damaged or not HDF5): {exc}.") from None
    layouts = []
    try:
        with f:
            a = f.attrs
            if a.get("format") != FORMAT:
                raise EnsembleError(f"{path} is not an ensemble file of this framework (its root attribute "
                                    f"'format' is {a.get('format')!r}, expected {FORMAT!r}).")
            if int(a["format_version"]) > FORMAT_VERSION:
                raise EnsembleError(f"{path} has ensemble format version {int(a['format_version'])}, newer than "
                                    f"the version {FORMAT_VERSION} this framework reads: upgrade the framework.")
            cfg = load_saved_config(_str_attr(a, "config", path), path)
            parts = []
            for key in sorted(f["members"]):
                g = f["members"][key]
                layout = json.loads(_str_attr(g.attrs, "layout", path))
                parts.append(Part(_str_attr(g.attrs, "label", path), _str_attr(g.attrs, "source", path),
                                  load_saved_config(_str_attr(g.attrs, "config", path), path), _get_blocks(g, layout, path)))
                layouts.append(layout)
            image_shape = json.loads(_str_attr(a, "image_shape", path))
            metrics = json.loads(_str_attr(a, "metrics", path))
            head = {k: _str_attr(a, k, path) for k in ("name", "strategy", "combine")}
            sizes = int(a["num_classes"]), int(a["input_dim"])
            mean, scale = _numeric(f["data"]["mean"], path), _numeric(f["data"]["scale"], path)
    except FrameworkError:
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise EnsembleError(f"{path} is damaged or incomplete: {type(exc).__name__}: {exc}.") from None
    settings = {k: v for k, v in OmegaConf.to_container(cfg.ensemble).items()
                if k not in ("name", "strategy", "combine", "members")}
    try:
        ens = Ensemble(head["name"], head["strategy"], head["combine"], parts, num_classes=sizes[0],
                       input_dim=sizes[1], mean=mean, scale=scale, data_cfg=cfg.data, image_shape=image_shape,
                       metrics=metrics, settings=settings, path=path)
    except FrameworkError as exc:
        raise EnsembleError(f"{path}: cannot rebuild a member model from its saved config: {exc} (a plugin model "
                            "must be importable: put it in plugins/).") from None
    for part, model, layout in zip(ens.parts, ens.model.models, layouts):
        if model.layout.describe() != layout:
            raise EnsembleError(f"{path}: member {part.label!r} rebuilt from its config has layout {model.layout}, "
                                "which differs from the saved weights; the model plugin changed since.")
    return ens


# ----------------------------------------------------------------------------------------------------------------
# sources: run folders, sweep folders, checkpoint files
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RunRef:
    """A run folder (or a lone checkpoint file) found in the sources."""

    label: str
    folder: pathlib.Path | None
    file: pathlib.Path | None = None  # a checkpoint file named directly

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.file.parent if self.file else self.folder / "checkpoints"

    def weights_file(self) -> pathlib.Path:
        """checkpoints/last.h5 (which also holds the best epoch's and the EMA weights), else best.h5."""
        if self.file:
            return self.file
        for name in ("last.h5", "best.h5"):
            if (self.checkpoints / name).is_file():
                return self.checkpoints / name
        raise EnsembleError(f"Run {self.label} ({self.folder}) has no checkpoints/last.h5 or best.h5: it was trained "
                            "with `checkpoint: null` or stopped before its first epoch ended.")

    def epoch_files(self) -> dict[int, pathlib.Path]:
        """{epoch: checkpoints/epochEEE_valX.XXXX.h5} in epoch order."""
        from framework.io.checkpoint import EPOCH_FILE

        try:
            names = os.listdir(self.checkpoints)
        except OSError:
            return {}
        found = {int(m.group(1)): self.checkpoints / n for n in names if (m := EPOCH_FILE.match(n))}
        return dict(sorted(found.items()))


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, pathlib.Path)):
        return [x]
    return list(x)


def _is_run(folder: pathlib.Path) -> bool:
    return (folder / "summary.json").is_file() or (folder / "checkpoints").is_dir()


def _natural(path: pathlib.Path):
    """Sort key: digit runs compare as numbers (sweep job 10 after job 9)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _subdirs(folder: pathlib.Path, pattern: str) -> list[pathlib.Path]:
    return [p for p in folder.glob(pattern) if p.is_dir() and not any(s.startswith(".") for s in p.parts[-2:])]


def _job(folder: pathlib.Path) -> tuple[int | None, list[str] | None]:
    """(job number when the run was a multirun job, else None; its command-line overrides) from .hydra/."""
    import yaml

    num = overrides = None
    try:
        with open(folder / ".hydra" / "overrides.yaml") as f:
            overrides = [str(o) for o in (yaml.safe_load(f) or [])]
        with open(folder / ".hydra" / "hydra.yaml") as f:
            hydra = yaml.safe_load(f)["hydra"]
        if str(hydra.get("mode")).endswith("MULTIRUN"):
            num = int(hydra["job"]["num"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        pass
    return num, overrides


def _label_runs(runs: list[RunRef]) -> None:
    """Short labels: a sweep job becomes <num>_<its overrides that not every run shares> (e.g. 0_seed=0), other
    runs (and a lone job) keep their folder name; the parent folder is prepended where labels would collide."""
    jobs = {id(r): _job(r.folder) for r in runs if r.folder is not None and r.file is None}
    lists = [set(o) for _, o in jobs.values() if o is not None]
    common = set.intersection(*lists) if lists else set()
    for r in runs:
        num, overrides = jobs.get(id(r), (None, None))
        own = ",".join(o for o in overrides or [] if o not in common)
        if num is not None and own:
            r.label = f"{num}_{own}"
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1 and r.folder is not None:
            r.label = f"{r.folder.parent.name}/{r.label}"


def _status(folder: pathlib.Path) -> str:
    """The run's summary.json status (ok, diverged, failed), or `unfinished` without one (still training, or
    killed: its checkpoints are those of an epoch that was not meant to be the last)."""
    try:
        status = json.loads((folder / "summary.json").read_text()).get("status")
    except FileNotFoundError:
        return "unfinished"
    except (OSError, ValueError, AttributeError):
        return "unreadable"
    return str(status) if status else "unreadable"


def resolve_sources(sources, include_unfinished: bool = False) -> tuple[list[RunRef], list[dict]]:
    """Usable runs of the sources, in order, and the ones skipped with the reason.

    A source is a run folder (summary.json or checkpoints/ inside), a folder of runs (a sweep: numbered job
    folders, up to two levels down), a checkpoint file, `latest` (the newest run or sweep), <folder>/latest (the
    newest <date>/<time> below it) or a glob of these. Members are runs that finished ok; a run without
    summary.json (a job of a killed sweep, or one still training) joins only with include_unfinished=True, with
    its last checkpoint. A checkpoint file named directly is always taken."""
    from framework.core.paths import PathError, expand

    sources = [str(s) for s in _as_list(sources)]
    if not sources:
        raise ConfigError("source", [], "one or more run folders, sweep folders or checkpoint files",
                          "e.g. source=[outputs/sweeps/2025-01-31/12-00-00] or source=[outputs/sweeps/latest].")
    runs, skipped = [], []
    for text in sources:
        try:
            paths = expand(text, "source")
        except PathError as exc:
            raise EnsembleError(str(exc)) from None
        for path in paths:
            if path.is_file():
                folder = path.parent.parent if path.parent.name == "checkpoints" else None
                runs.append(RunRef(path.stem if folder is None else f"{folder.name}:{path.stem}", folder, path))
                continue
            if not path.is_dir():
                raise EnsembleError(f"source {text}: no such folder or file.")
            folders = [path] if _is_run(path) else (
                sorted((p for p in _subdirs(path, "*") if _is_run(p)), key=_natural)
                or sorted((p for p in _subdirs(path, "*/*") if _is_run(p)), key=_natural))
            if not folders:
                raise EnsembleError(f"source {text} holds no runs: expected a run folder (with summary.json or "
                                    "checkpoints/) or a sweep folder of such runs.")
            for folder in folders:
                status = _status(folder)
                if status == "ok" or (status == "unfinished" and include_unfinished):
                    runs.append(RunRef(folder.name, folder))
                elif status == "unfinished":
                    skipped.append({"source": str(folder), "reason": "the run did not finish (no summary.json: "
                                    "killed, or still training); include_unfinished=true takes its last "
                                    "checkpoint"})
                else:
                    skipped.append({"source": str(folder), "reason": f"the run {status}"})
    _label_runs(runs)
    if not runs:
        counts = {}
        for s in skipped:
            why = "unfinished" if "did not finish" in s["reason"] else s["reason"].removeprefix("the run ")
            counts[why] = counts.get(why, 0) + 1
        text = ", ".join(f"{n} {why}" for why, n in counts.items())
        hint = (" Runs without summary.json can join with include_unfinished=true (their last checkpoint)."
                if counts.get("unfinished") else "")
        raise EnsembleError(f"The sources hold no usable runs ({text}): members must have finished ok.{hint}")
    return runs, skipped


# ----------------------------------------------------------------------------------------------------------------
# members and the shared evaluation data
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Member:
    """One set of weights of one checkpoint, scored on the shared split."""

    label: str
    file: pathlib.Path
    use: str  # raw | ema | best: which weights of the file
    ckpt: object  # framework.checkpoint.Checkpoint
    theta: np.ndarray  # (P,) in the run's dtype
    val_acc: float = math.nan
    test_acc: float = math.nan
    seconds: float | None = None  # time to predict the val+test rows (s), measured on demand

    @property
    def cfg(self):
        return self.ckpt.cfg


def _val(m: Member) -> float:
    """Sort key: validation accuracy, NaN (no validation rows) last."""
    return m.val_acc if math.isfinite(m.val_acc) else -1.0


def _flat(cfg, prefix: str = "") -> dict:
    """{dotted key: scalar or list text} of a config (or of its keys under `prefix`)."""
    flat = flat_hparams(cfg)
    return {k: v for k, v in flat.items() if not prefix or k == prefix or k.startswith(prefix + ".")}


def _differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _describe(diffs, first: str, limit: int = 6) -> str:
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
        why = f"its data config differs: {_describe(diffs, ref.label)}"
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
            what = (_describe(diffs, ref.label) + "; " if diffs else "") + (
                f"dtype {m.theta.dtype} vs {ref.theta.dtype}; " if m.theta.dtype != ref.theta.dtype else "")
            raise NotApplicable(
                f"Cannot average the weights of {m.label} and {ref.label}: different architectures ({what}"
                f"layouts {m.ckpt.layout} and {ref.ckpt.layout}). A weight soup needs one parameter layout, and "
                "works best for members that share their initialization (checkpoints of one run, or runs with the "
                "same seed); combine the predictions of different architectures instead (strategy=topk or "
                "seeds).")


def _loops_for(fn, min_seconds: float) -> int:
    """Calls of fn per timed batch so that a batch lasts at least min_seconds (after one warm-up call)."""
    fn()
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or loops >= 1 << 20:
            return loops
        loops = max(2 * loops, int(loops * 1.2 * min_seconds / max(elapsed, 1e-9)))


def time_calls(fns: list, repeats: int, min_seconds: float) -> list[float]:
    """Best seconds per call of each function, timed round-robin `repeats` times so that load from other
    processes hits them all alike, with BLAS on one thread (threadpoolctl, when installed): threads fighting
    for the cores would blur the ratios."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=1)
    except ImportError:
        limit = contextlib.nullcontext()
    with limit:
        loops = [_loops_for(fn, min_seconds) for fn in fns]
        best = [math.inf] * len(fns)
        for _ in range(repeats):
            for i, (fn, n) in enumerate(zip(fns, loops)):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                best[i] = min(best[i], (time.perf_counter() - t0) / n)
    return best


@dataclass
class TimingConfig:
    """The `timing:` section of conf/ensemble.yaml."""

    repeats: int = param(3, "timed repetitions of each prediction, the best kept (0 = no timing)",
                         range="[0, inf)")
    min_seconds: float = param(0.02, "each repetition loops until it lasts this long (s)", range="(0, inf)")


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
        from framework.engine.train import load_splits

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
        from framework.io.checkpoint import load

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
        vals = [_val(self.run_member(r)) for r in self.runs]
        return self.runs[max(range(len(vals)), key=lambda i: (vals[i], -i))]

    def val_accuracy(self, model, theta) -> float:
        return accuracy(model.scores(theta, self.splits.X_val), self.splits.y_val)

    def ensemble(self, name: str, strategy: str, members: list[Member], combine: str | None = None) -> Ensemble:
        """A prediction ensemble of `members`."""
        parts = [Part(m.label, f"{m.file}:{m.use}", m.cfg, m.theta) for m in members]
        return self._make(name, strategy, combine or self.combine, parts)

    def single(self, name: str, strategy: str, like: Member, theta, label: str, source: str) -> Ensemble:
        """A one-model ensemble holding `theta` (averaged weights) in the architecture of `like`."""
        return self._make(name, strategy, "mean_prob", [Part(label, source, like.cfg, theta)])

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


# ----------------------------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------------------------
STRATEGIES = Registry("ensemble strategy", "strategy")


@dataclass
class Built:
    """An ensemble a strategy made, with the members it is compared against (its pool) and a note."""

    ensemble: Ensemble
    members: list[Member]
    note: str = ""
    averaged: list[Member] | None = None  # a soup: the members whose weights it averages


class Strategy:
    """Base of ensemble strategies: built with its validated config; build(ctx) returns the ensembles it makes
    and raises NotApplicable when the sources do not fit. Choose members by validation accuracy only."""

    def __init__(self, cfg):
        self.cfg = cfg

    def build(self, ctx: Context) -> list[Built]:
        raise NotImplementedError


def _need_runs(ctx: Context, strategy: str, n: int = 2) -> None:
    if len(ctx.runs) < n:
        raise NotApplicable(f"strategy {strategy} needs at least {n} runs; the sources hold {len(ctx.runs)}.")


@STRATEGIES.register("seeds")
class Seeds(Strategy):
    """Runs that differ only in `seed` (notes 6.2): variety from the initialization and data order alone."""

    def build(self, ctx):
        _need_runs(ctx, "seeds")
        members = [ctx.run_member(r) for r in ctx.runs]
        ref = members[0]
        for m in members[1:]:
            diffs = [d for d in config_differences(ref.cfg, m.cfg) if d[0] != "seed"]
            if diffs:
                raise NotApplicable(f"strategy seeds needs runs that differ only in `seed`, but {m.label} differs "
                                    f"from {ref.label}: {_describe(diffs, ref.label)}. Use strategy=topk "
                                    "to combine runs with different hyperparameters.")
        seen = {}
        for m in members:
            if m.cfg.seed in seen:
                raise NotApplicable(f"strategy seeds: {seen[m.cfg.seed]} and {m.label} both have seed {m.cfg.seed}: "
                                    "identical runs add nothing to an ensemble.")
            seen[m.cfg.seed] = m.label
        return [Built(ctx.ensemble("seeds", "seeds", members), members, f"seeds {sorted(seen)}")]


@dataclass
class TopkConfig:
    k: int = param(5, "how many of the runs with the best validation accuracy to combine", range="[2, inf)")


@STRATEGIES.register("topk", config=TopkConfig)
class TopK(Strategy):
    """The k runs with the best validation accuracy, e.g. the best trials of a sweep (notes 6.3)."""

    def build(self, ctx):
        _need_runs(ctx, "topk")
        members = [ctx.run_member(r) for r in ctx.runs]
        k = min(self.cfg.k, len(members))
        chosen = sorted(members, key=_val, reverse=True)[:k]  # stable: the earlier run wins a tie
        return [Built(ctx.ensemble(f"top{k}", "topk", chosen), chosen,
                      f"the {k} best of {len(members)} runs by validation accuracy")]


@dataclass
class SnapshotsConfig:
    select: str = param("auto", "which checkpoints: cycles (ends of the cosine cycles under warm restarts), last "
                                "(the last k epochs), best (the k best epochs on validation), auto (cycles when "
                                "the schedule restarts, else last)", choices=("auto", "cycles", "last", "best"))
    k: int = param(5, "at most this many checkpoints", range="[2, inf)")


def cycle_end_epochs(cfg, steps_per_epoch: int, epochs: int) -> list[int]:
    """Epochs (1-based) after which the run's learning-rate schedule restarts (jumps up after its warm-up): the
    ends of the cosine cycles, where the learning rate is at its minimum. A restart inside an epoch counts for
    the epoch before it. Empty when the schedule never restarts."""
    name, opts = component_config(cfg.schedule)
    schedule = SCHEDULES.build(name, **opts)
    base, warmup = float(cfg.lr), float(getattr(schedule.cfg, "warmup", 0) or 0)
    per_step = schedule.unit == "iteration"
    steps = np.arange(epochs * steps_per_epoch) if per_step else np.arange(epochs)
    lrs = np.array([schedule.value(float(t), base) for t in steps])
    rises = np.flatnonzero((lrs[1:] > lrs[:-1] * (1 + 1e-9) + 1e-15) & (steps[1:] > warmup)) + 1
    ends = {int(steps[i] // steps_per_epoch) if per_step else int(steps[i]) for i in rises}
    return sorted(e for e in ends if 1 <= e < epochs)


@STRATEGIES.register("snapshots", config=SnapshotsConfig)
class Snapshots(Strategy):
    """Several checkpoints of one run (notes 6.4; with several runs, the best one by validation)."""

    def members(self, ctx) -> tuple[list[Member], str]:
        run = ctx.best_run()
        files = run.epoch_files()
        if len(files) < 2:
            raise NotApplicable(f"strategy snapshots needs at least 2 epoch checkpoints of {run.label}; it keeps "
                                f"{len(files)} (trained with checkpoint.every=0, or keep_top_k pruned them).")
        k, select = self.cfg.k, self.cfg.select
        ref = ctx.run_member(run)
        ends = []
        if select in ("auto", "cycles"):
            last = max(files)
            ends = cycle_end_epochs(ref.cfg, int(ref.ckpt.info["steps_per_epoch"]), last) + [last]
            if len(ends) < 2 and select == "cycles":
                raise NotApplicable(f"snapshots.select=cycles: the schedule of {run.label} "
                                    f"({ref.cfg.schedule.name}) never restarts; use schedule=cosine with "
                                    "schedule.restart=true, or snapshots.select=last.")
            missing = [e for e in ends if e not in files]
            if missing:
                raise NotApplicable(f"{run.label} has no checkpoint for the cycle ends {missing} "
                                    "(checkpoint.every > 1 or keep_top_k removed them).")
            select = "cycles" if len(ends) >= 2 else "last"
        if select == "cycles":
            epochs = ends[-k:]
        elif select == "best":
            scored = [(ctx.member(f, "raw", f"{run.label}:epoch{e:03d}").val_acc, e) for e, f in files.items()]
            epochs = sorted(e for _, e in sorted(scored, key=lambda t: (-t[0], t[1]))[:k])
        else:
            epochs = list(files)[-k:]
        members = [ctx.member(files[e], "raw", f"{run.label}:epoch{e:03d}") for e in epochs]
        return members, f"{select}: epochs {epochs} of {run.label}"

    def build(self, ctx):
        members, note = self.members(ctx)
        return [Built(ctx.ensemble("snapshots", "snapshots", members), members, note)]


@STRATEGIES.register("ema")
class EMA(Strategy):
    """The running average of the weights (notes 6.5) next to the raw weights at the end of the best run."""

    def build(self, ctx):
        run = ctx.best_run()
        raw = ctx.member(run.weights_file(), "raw", f"{run.label}:last")
        ema = raw.ckpt.ema_params
        if ema is None:
            raise NotApplicable(f"strategy ema: {run.label} kept no running average (trained with ema.decay=0).")
        decay = OmegaConf.select(raw.cfg, "ema.decay")
        ens = ctx.single("ema", "ema", raw, ema, f"{run.label}:ema", f"{raw.file}:ema")
        return [Built(ens, [raw], f"EMA (decay {decay}) of {run.label} against its raw weights at the end")]


@dataclass
class SoupConfig:
    pool: str = param("auto", "members to average: runs (each run's chosen weights), snapshots (the checkpoints "
                              "strategy snapshots picks), auto (runs when there are several, else snapshots)",
                      choices=("auto", "runs", "snapshots"))
    methods: list[str] = param(["uniform", "greedy"], "uniform: average all; greedy: best first, keep a member "
                                                      "only if validation accuracy does not drop",
                               choices=("uniform", "greedy"))


def average_weights(members: list[Member]) -> np.ndarray:
    """Mean of the members' (P,) weights, accumulated in float64, in their dtype."""
    total = np.zeros(members[0].theta.size, dtype=np.float64)
    for m in members:
        total += m.theta
    return (total / len(members)).astype(members[0].theta.dtype)


@STRATEGIES.register("soup", config=SoupConfig)
class Soup(Strategy):
    """Weight averaging of checkpoints with one architecture ("model soups"): uniform and greedy."""

    def build(self, ctx):
        pool = self.cfg.pool
        if pool == "auto":
            pool = "runs" if len(ctx.runs) >= 2 else "snapshots"
        if pool == "runs":
            _need_runs(ctx, "soup (pool runs)")
            members = [ctx.run_member(r) for r in ctx.runs]
        else:
            members, _ = Snapshots(ctx.options.get("snapshots") or SnapshotsConfig()).members(ctx)
        check_same_architecture(members)
        model = members[0].ckpt.model
        out = []
        if "uniform" in self.cfg.methods:
            out.append(Built(self._soup(ctx, "soup_uniform", members, average_weights(members)), members,
                             f"mean of {len(members)} {pool}", members))
        if "greedy" in self.cfg.methods:
            order = sorted(members, key=_val, reverse=True)
            kept, theta, best = [order[0]], order[0].theta, order[0].val_acc
            for m in order[1:]:
                candidate = average_weights(kept + [m])
                val = ctx.val_accuracy(model, candidate)
                if val >= best:
                    kept, theta, best = kept + [m], candidate, val
            labels = [m.label for m in kept]
            note = f"kept {len(kept)} of {len(members)} {pool}" + (f": {', '.join(labels)}" if len(kept) <= 3 else
                                                                   " (listed in report.json)")
            out.append(Built(self._soup(ctx, "soup_greedy", kept, theta), members, note, kept))
        return out

    @staticmethod
    def _soup(ctx, name, members, theta):
        return ctx.single(name, "soup", members[0], theta, f"{name} of {len(members)}",
                          ", ".join(f"{m.file}:{m.use}" for m in members))


def _section(cls, node, prefix: str):
    """A validated `cls` (a config dataclass) from a config node; errors name the key `<prefix>.<field>`."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = prefix or "python -m framework.ensemble"
        raise ConfigError(f"{prefix}.{unknown[0]}" if prefix else unknown[0], values[unknown[0]],
                          f"options of {where}: {', '.join(sorted(known)) or '(none)'}")
    return validate(cls(**values), prefix)


# ----------------------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------------------
def _best(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else math.nan


def ensemble_row(ctx: Context, b: Built) -> dict:
    """Scores of one built ensemble on the shared split, its gains and evaluation cost. Gains compare with the
    ensemble's own members: val_gain with the best validation accuracy; test_gain with the test accuracy of the
    member validation picks (the model one would deploy without the ensemble); test_gain_oracle with the best
    test accuracy of any member (hindsight: a stricter bar, biased upwards by the pick of the maximum)."""
    ens, s = b.ensemble, ctx.splits
    val = accuracy(ens.model.scores(ens.params, s.X_val), s.y_val)
    test = accuracy(ens.model.scores(ens.params, s.X_test), s.y_test)
    picked = max(b.members, key=_val)
    best_val, best_test = _best(m.val_acc for m in b.members), _best(m.test_acc for m in b.members)
    ens.metrics.update(val_acc=val, test_acc=test)
    return {"name": ens.name, "strategy": ens.strategy, "members": [m.label for m in b.members],
            "parts": len(ens.parts), "combine": ens.combine if len(ens.parts) > 1 else "weights",
            "val_acc": val, "test_acc": test, "picked_member": picked.label, "picked_member_test_acc":
            picked.test_acc, "best_member_val_acc": best_val, "best_member_test_acc": best_test,
            "val_gain": val - best_val, "test_gain": test - picked.test_acc, "test_gain_oracle": test - best_test,
            "cost": ctx.relative_cost(lambda: ens.model.scores(ens.params, ctx.X_eval), b.members),
            "params": int(ens.params.size), "note": b.note, "file": None,
            "averaged": [m.label for m in b.averaged] if b.averaged else None}


def _acc(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _gain(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.4f}"


def _cost(x) -> str:
    return "–" if x is None else f"{x:.2f}x"


def render_markdown(report: dict) -> str:
    """The report as Markdown tables: members, ensembles, skipped strategies, distillation."""
    d = report["data"]
    lines = ["# Ensembles (notes 6)", "",
             f"Sources: {', '.join(report['sources'])}. Strategy: {report['strategy']}; prediction ensembles "
             f"combine by {report['combine']}; members use their {report['weights']} weights.", "",
             f"Evaluation data: {d['dataset']} (data.split_seed={d['split_seed']}), {d['val']} validation and "
             f"{d['test']} test rows, rebuilt from the config of the first member ({d['from']}); every member "
             "shares this dataset, split, preprocessing and classes. Selection (top-k, greedy soup, best run) "
             "uses validation accuracy only; test accuracy is reported, never used to choose.", "",
             "## Members", "", "| member | weights | val acc | test acc | params |", "|---|---|---|---|---|"]
    for m in report["members"]:
        lines.append(f"| {m['label']} | {m['weights']} | {_acc(m['val_acc'])} | {_acc(m['test_acc'])} | "
                     f"{m['params']:,} |")
    lines += ["", "## Ensembles", "",
              "| ensemble | members | combine | val acc | test acc | val gain | test gain | test gain (oracle) | "
              "eval cost | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in report["ensembles"]:
        lines.append(f"| {e['name']} | {len(e['members'])} | {e['combine']} | {_acc(e['val_acc'])} | "
                     f"{_acc(e['test_acc'])} | {_gain(e['val_gain'])} | {_gain(e['test_gain'])} | "
                     f"{_gain(e['test_gain_oracle'])} | {_cost(e['cost'])} | {e['note']} |")
    lines += ["", "Gains compare with the ensemble's own members (for ema: the raw weights). Val gain: minus the "
                  "best member's validation accuracy. Test gain: minus the test accuracy of the member validation "
                  "picks (the single model one would deploy). Test gain (oracle): minus the best test accuracy of "
                  "any member, known only in hindsight. With weights=best a member's validation accuracy is the "
                  "best of its epochs, picked on this same split: biased upwards, which lowers every val gain. "
                  "Eval cost: measured time to predict the val+test rows relative to one of its members (mean "
                  "over members; BLAS on one thread)."]
    if report["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s.get('strategy') or s.get('source')}: {s['reason']}" for s in report["skipped"]]
    dist = report.get("distill")
    if dist:
        lines += ["", f"## Distillation (notes 6.6): teacher {dist['teacher']}, T={dist['temperature']:g}, "
                      f"alpha={dist['alpha']:g} (hard-label weight)", "",
                  "| model | params | val acc | test acc | eval cost | agrees with teacher (test) |",
                  "|---|---|---|---|---|---|"]
        for r in dist["rows"]:
            agree = "–" if r.get("agreement") is None else f"{r['agreement']:.4f}"
            lines.append(f"| {r['name']} | {r['params']:,} | {_acc(r['val_acc'])} | {_acc(r['test_acc'])} | "
                         f"{_cost(r.get('cost'))} | {agree} |")
    return "\n".join(lines) + "\n"


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=:-]", "_", text)


def write_tensorboard(report: dict, markdown: str, out_dir: pathlib.Path) -> bool:
    """Scalars member/<label>/{val,test}_acc and ensemble/<name>/{val_acc, test_acc, val_gain, test_gain,
    cost} at step 0, and the report as the text `ensemble_report`. False when the writer is unavailable."""
    try:
        from framework.monitoring.tensorboard import EventWriter
    except ImportError:
        log.warning("framework.tensorboard is unavailable: no TensorBoard events for the report.")
        return False
    with EventWriter(out_dir) as w:
        for m in report["members"]:
            w.scalars({f"member/{_tag(m['label'])}/val_acc": m["val_acc"] if m["val_acc"] is not None else math.nan,
                       f"member/{_tag(m['label'])}/test_acc": m["test_acc"] if m["test_acc"] is not None
                       else math.nan}, 0)
        for e in report["ensembles"]:
            w.scalars({f"ensemble/{_tag(e['name'])}/{k}": e[k] for k in
                       ("val_acc", "test_acc", "val_gain", "test_gain", "cost") if e.get(k) is not None}, 0)
        w.text("ensemble_report", markdown, 0)
    return True


def plot_report(report: dict, path: pathlib.Path) -> bool:
    """Bar chart of validation and test accuracy, members (grey) against ensembles (colour), with the best
    member's test accuracy as a dashed line. Written atomically; False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no report.png (pip install matplotlib).")
        return False
    rows = [(m["label"], m["val_acc"], m["test_acc"], False) for m in report["members"]]
    rows += [(e["name"], e["val_acc"], e["test_acc"], True) for e in report["ensembles"]]
    for r in (report.get("distill") or {}).get("rows", [])[2:]:
        rows.append((r["name"], r["val_acc"], r["test_acc"], True))
    vals = [v for _, a, b, _ in rows for v in (a, b) if v is not None and math.isfinite(v)]
    if not vals:
        return False
    fig = Figure(figsize=(max(6.0, 0.55 * len(rows) + 2.0), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(rows))
    nan = [math.nan if v is None else v for v in (r[1] for r in rows)], \
        [math.nan if v is None else v for v in (r[2] for r in rows)]
    ax.bar(x - 0.2, nan[0], 0.4, color=["#7aa6d6" if r[3] else "#c8c8c8" for r in rows], label="validation")
    ax.bar(x + 0.2, nan[1], 0.4, color=["#1f5fa8" if r[3] else "#7f7f7f" for r in rows], label="test")
    best = _best(m["test_acc"] for m in report["members"])
    if math.isfinite(best):
        ax.axhline(best, color="black", linestyle="--", linewidth=0.8, label="best member (test)")
    ax.set_xticks(x, [r[0] for r in rows], rotation=40, ha="right", fontsize=7)
    ax.set_ylim(max(0.0, min(vals) - 0.02), min(1.0, max(vals) + 0.01))
    ax.set_ylabel("accuracy")
    ax.set_title("members (grey), ensembles and students (blue): validation light, test dark", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    ax.grid(axis="y", alpha=0.3)
    save_figure_atomic(fig, path)
    return True


# ----------------------------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class EnsembleSettings:
    """Top-level options of conf/ensemble.yaml (source and the sections are read separately)."""

    strategy: str = param("all", "seeds | topk | snapshots | ema | soup | <plugin> | all")
    combine: str = param("mean_prob", "how prediction ensembles combine members", choices=COMBINES)
    weights: str = param("best", "which weights of each run", choices=tuple(WEIGHTS))
    save: bool = param(True, "write <name>.h5 for every ensemble")
    plot: bool = param(True, "write report.png (needs matplotlib)")
    tensorboard: bool = param(True, "write the report to TensorBoard event files in the output folder")
    include_unfinished: bool = param(False, "also take runs without summary.json (killed or still training) as "
                                            "members, with their last checkpoint")


SECTIONS = ("source", "timing", "distill")


def build_ensembles(cfg, out_dir) -> dict:
    """Build, score, save and report the ensembles `cfg` (shaped like conf/ensemble.yaml) asks for, into
    out_dir: <name>.h5 per ensemble, report.md, report.json, report.png, TensorBoard events, distill/. Returns
    the report dict (also written as report.json)."""
    from framework.ensemble.distill import DistillConfig

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    out_dir = pathlib.Path(out_dir)
    names = ORDER + tuple(n for n in STRATEGIES.names() if n not in ORDER)
    top = {k: cfg[k] for k in cfg if k not in SECTIONS and k not in names}
    settings = _section(EnsembleSettings, top, "")
    if settings.strategy != "all" and settings.strategy not in STRATEGIES:
        raise ConfigError("strategy", settings.strategy, f"all, or one of {', '.join(names)}")
    options = {n: _section(STRATEGIES.get(n).config_cls, cfg.get(n), n) for n in names}
    timing = _section(TimingConfig, cfg.get("timing"), "timing")
    distill_opts = _section(DistillConfig, cfg.get("distill"), "distill")

    sources = [str(x) for x in _as_list(cfg.get("source"))]
    runs, skipped = resolve_sources(sources, settings.include_unfinished)
    ctx = Context(runs, settings.weights, settings.combine, timing, options, sources)
    _score_runs(ctx)
    built = []
    chosen = names if settings.strategy == "all" else (settings.strategy,)
    for i, name in enumerate(chosen, 1):
        try:
            made = STRATEGIES.get(name).factory(options[name]).build(ctx)
            built += made
            log.info("[%d/%d strategies] %s: built %s", i, len(chosen), name,
                     ", ".join(b.ensemble.name for b in made) or "nothing")
        except NotApplicable as exc:
            if settings.strategy != "all":
                raise
            skipped.append({"strategy": name, "reason": str(exc)})
            log.info("[%d/%d strategies] %s: skipped (%s)", i, len(chosen), name, exc)
    if not built:
        reasons = " ".join(f"{s.get('strategy') or s.get('source')}: {s['reason']}" for s in skipped)
        raise EnsembleError(f"No strategy applies to these sources. {reasons}")
    names_built = [b.ensemble.name for b in built]
    if len(set(names_built)) < len(names_built):
        raise EnsembleError(f"Two ensembles share a name ({', '.join(names_built)}): a strategy plugin must name "
                            "its ensembles apart from the others'.")

    rows = [ensemble_row(ctx, b) for b in built]
    for b, row in zip(built, rows):
        if settings.save:
            row["file"] = str(save_ensemble(b.ensemble, out_dir / f"{b.ensemble.name}.h5"))
    members, seen = [], set()
    for b in built:
        for m in b.members:
            if id(m) not in seen:
                seen.add(id(m))
                members.append({"label": m.label, "file": str(m.file), "weights": m.use, "val_acc": m.val_acc,
                                "test_acc": m.test_acc, "params": int(m.theta.size), "seconds": m.seconds})
    s, ref = ctx.splits, ctx.reference
    report = {"sources": sources, "strategy": settings.strategy,
              "combine": settings.combine, "weights": settings.weights,
              "data": {"dataset": ref.cfg.data.name, "split_seed": OmegaConf.select(ref.cfg, "data.split_seed"),
                       "val": int(len(s.y_val)), "test": int(len(s.y_test)), "from": ref.label},
              "members": members, "ensembles": rows, "skipped": skipped, "distill": None}
    if distill_opts.enabled:
        report["distill"] = _distill(ctx, built, rows, distill_opts, out_dir / "distill")
    report = _json_safe(report)
    markdown = render_markdown(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "report.md", markdown)
    write_json_atomic(out_dir / "report.json", report)
    if settings.plot:
        plot_report(report, out_dir / "report.png")
    if settings.tensorboard:
        write_tensorboard(report, markdown, out_dir)
    log.info("%s", markdown)
    return report


def _score_runs(ctx: Context) -> None:
    """Open and score every run's member up front (the strategies reuse them), one progress line per run with
    the best so far and the time left: a sweep of many trials takes a while to load."""
    from tqdm import tqdm

    start, best = time.monotonic(), None
    n = len(ctx.runs)
    for i, run in enumerate(ctx.runs, 1):
        m = ctx.run_member(run)
        if math.isfinite(m.val_acc) and (best is None or m.val_acc > best.val_acc):
            best = m
        left = (time.monotonic() - start) / i * (n - i)
        log.info("[%d/%d runs] %s: val acc %s, test acc %s | best %s | %s", i, n, m.label, _acc(m.val_acc),
                 _acc(m.test_acc), f"{best.val_acc:.4f} ({best.label})" if best else "-",
                 f"ETA {tqdm.format_interval(left)}" if i < n else "all scored")


def _distill(ctx: Context, built: list[Built], rows: list[dict], opts, out_dir: pathlib.Path) -> dict:
    """Distill the teacher ensemble; rows: best member, teacher, distilled student, hard-label student."""
    from framework.ensemble.distill import distill

    by_name = {b.ensemble.name: (b, r) for b, r in zip(built, rows)}
    if opts.teacher == "best":  # prediction ensembles first: a one-model teacher is no ensemble to compress
        teacher, row = max(zip(built, rows), key=lambda br: (len(br[0].ensemble.parts) > 1, br[1]["val_acc"]
                                                              if math.isfinite(br[1]["val_acc"]) else -1.0))
    elif opts.teacher in by_name:
        teacher, row = by_name[opts.teacher]
    else:
        raise ConfigError("distill.teacher", opts.teacher, f"best, or one of the ensembles built: "
                                                           f"{', '.join(by_name)}")
    best = max(teacher.members, key=_val)
    log.info("distilling %s (T=%g, alpha=%g) into a student", teacher.ensemble.name, opts.temperature, opts.alpha)
    result = distill(teacher.ensemble, ctx.splits, ctx.reference.cfg, opts, out_dir,
                     cost=lambda fn: ctx.relative_cost(fn, teacher.members))
    pred = np.argmax(teacher.ensemble.model.scores(teacher.ensemble.params, ctx.splits.X_test), axis=1)
    best_pred = np.argmax(best.ckpt.model.scores(best.theta, ctx.splits.X_test), axis=1)
    head = [{"name": f"best member ({best.label}, by val)", "params": int(best.theta.size),
             "val_acc": best.val_acc, "test_acc": best.test_acc, "cost": 1.0 if row["cost"] is not None else None,
             "agreement": float(np.mean(best_pred == pred)) if len(pred) else None},
            {"name": f"teacher: {teacher.ensemble.name}", "params": row["params"], "val_acc": row["val_acc"],
             "test_acc": row["test_acc"], "cost": row["cost"], "agreement": 1.0}]
    return {**result, "rows": head + result["students"]}


def main(cfg) -> float:
    """The Hydra task: build the ensembles into Hydra's run folder; returns the best ensemble's val accuracy."""
    from hydra.core.hydra_config import HydraConfig

    report = build_ensembles(cfg, pathlib.Path(HydraConfig.get().runtime.output_dir))
    return _best(e["val_acc"] for e in report["ensembles"])


def hydra_app():
    # Hydra is imported here, not at module level: framework.load opens ensemble files without it.
    import hydra

    from framework.cli.app import CONF_DIR, user_errors

    return hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ensemble")(user_errors(main))
