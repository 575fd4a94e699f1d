"""Distillation (notes 6.6; Hinton, Vinyals and Dean 2015, "dark knowledge"): train one student on an ensemble's
soft targets, so a single model recovers much of the ensemble's gain at the evaluation cost of one model.

Loss per training example: alpha * CE(y, softmax(s)) + (1 - alpha) * T^2 * KL(q_T || softmax(s / T)), with s the
student's scores, y the hard label and q_T the teacher's class probabilities at temperature T (every member's
scores divided by T before they are combined). A higher T exposes how the teacher ranks the wrong classes; the T^2
factor keeps the soft term's gradient, which shrinks as 1/T^2, on the scale of the hard term. (KL and the
cross-entropy with q_T differ by q_T's entropy, a constant: same gradient, but the soft term reads 0 at a match.)

A student is any registered model that implements Model.distill_loss_grad(theta, grad, X, y, soft, idx, T, alpha,
noise) (`can_distill`; every layered model does, on its generated step: mlp, softmax, svm, sequential...). It
trains in the framework's own `Run` (optimizer, schedule, regularizer, EMA, checkpoints, TensorBoard): only the
loss changes, through `SoftTargetModel`. The student keeps the first member's config (data, optimizer, schedule)
except the keys of `distill` (model, epochs, lr, seed); its run folder holds the usual summary.json and
checkpoints, so `framework.load(<run>/checkpoints/best.h5)` opens the student like any model.
"""
from __future__ import annotations

import dataclasses
import pathlib
import typing
from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf

from framework.core.errors import ConfigError, FrameworkError
from framework.components.model import Model
from framework.core.params import param


class DistillError(FrameworkError):
    """The student cannot be trained on soft targets (model without distill_loss_grad, bad soft targets)."""


@dataclass
class DistillConfig:
    """The `distill:` section of conf/ensemble.yaml."""

    enabled: bool = param(False, "train a student on an ensemble's soft targets after the ensembles are built")
    teacher: str = param("best", "the ensemble to distill: best (the prediction ensemble with the highest "
                                 "validation accuracy) or its name")
    model: dict = param({}, "student model: overrides on the first member's model config; with `name:` another "
                            "registered model whose defaults fill the rest")
    temperature: float = param(4.0, "softmax temperature T of the soft targets", range="(0, inf)")
    alpha: float = param(0.5, "weight of the hard-label loss; the soft term gets 1 - alpha", range="[0, 1]")
    epochs: int = param(20, "student training epochs", range="[1, inf)")
    lr: typing.Optional[float] = param(None, "student learning rate (null = the first member's lr)",
                                       range="(0, inf)")
    seed: typing.Optional[int] = param(None, "student seed (null = the first member's seed)", range="[0, inf)")
    baseline: bool = param(True, "also train the same student on the hard labels alone: the fair comparison")


class SoftTargetModel(Model):
    """Wraps a student model so that the training loop's `loss_grad` is the distillation loss against fixed soft
    targets soft (N_train, C) (rows aligned with the training split the Run trains on). Everything else
    (scores, init, dropout noise, activations) is the student's own."""

    def __init__(self, inner: Model, soft: np.ndarray, T: float, alpha: float):
        if not inner.can_distill():
            raise DistillError(
                f"The student model {type(inner).__name__} cannot be distilled: it has no method "
                "distill_loss_grad(theta, grad, X, y, soft, idx, T, alpha, noise). The built-in mlp, softmax and "
                "svm models (every layered model) have one; add it to your model or choose one of those.")
        soft = np.ascontiguousarray(soft, dtype=inner.dtype)
        if soft.ndim != 2 or soft.shape[1] != inner.num_classes or not np.all(np.isfinite(soft)):
            raise DistillError(f"Soft targets must be finite (N, {inner.num_classes}) probabilities, got shape "
                               f"{soft.shape}.")
        super().__init__(inner.cfg)
        self.inner, self.soft, self.T, self.alpha = inner, soft, float(T), float(alpha)
        self.input_dim, self.num_classes, self.dtype = inner.input_dim, inner.num_classes, inner.dtype
        self.layout, self.loss_kind, self.activation_kind = inner.layout, inner.loss_kind, inner.activation_kind

    def loss_grad(self, theta, grad, X, y, idx=None, noise=None):
        if len(X) != len(self.soft):
            raise DistillError(f"Soft targets cover {len(self.soft)} rows but the training split has {len(X)}.")
        return self.inner.distill_loss_grad(theta, grad, X, y, self.soft, idx, self.T, self.alpha, noise)

    def init_params(self, rng, small=False):
        return self.inner.init_params(rng, small)

    def scores(self, theta, X):
        return self.inner.scores(theta, X)

    def sample_noise(self, rng, n):
        return self.inner.sample_noise(rng, n)

    def winners(self, theta, X, y, noise=None):
        return self.inner.winners(theta, X, y, noise)

    def activations(self, theta, X):
        return self.inner.activations(theta, X)


def student_config(reference_cfg, opts: DistillConfig):
    """The student's training config: the first member's config with the student model (opts.model merged on
    the member's model node, or replacing it when it names another model), epochs, lr and seed of `opts`;
    pre-flight off, only last.h5/best.h5 checkpoints, TensorBoard and diagnostics switched as for the member
    (with this framework's default options), never a resume."""
    if not isinstance(opts.model, dict):
        raise ConfigError("distill.model", opts.model, "a mapping of model options, e.g. {hidden_sizes: [64]}")
    base = OmegaConf.to_container(reference_cfg, resolve=True)
    model, override = dict(base["model"]), dict(opts.model)
    base["model"] = override if override.get("name", model.get("name")) != model.get("name") else {**model,
                                                                                                  **override}
    base["epochs"] = opts.epochs
    if opts.lr is not None:
        base["lr"] = opts.lr
    if opts.seed is not None:
        base["seed"] = opts.seed
    base["resume"] = None
    # Of the member's operational sections keep only the switches: their other options belong to the framework
    # version that trained the member, and the student runs under this one.
    for key in ("tensorboard", "diagnostics"):
        if isinstance(base.get(key), dict):
            base[key] = {"enabled": base[key].get("enabled", True)}
    if base.get("checkpoint") is not None:
        base["checkpoint"] = {"every": 0}  # last.h5 and best.h5 only
    base["preflight"] = {"mode": "off"}
    return OmegaConf.create(base)


def _in_dtype(splits, dtype):
    """The splits with features in `dtype` (the student's), sharing the labels and preprocessing."""
    if splits.X_train.dtype == dtype:
        return splits
    return dataclasses.replace(splits, **{k: getattr(splits, k).astype(dtype)
                                          for k in ("X_train", "X_val", "X_test")})


def train_student(cfg, splits, run_dir, soft=None, T: float = 1.0, alpha: float = 0.0):
    """Train cfg's model on `splits` in a Run at run_dir: on the hard labels, or on soft targets soft
    (N_train, C) at temperature T with hard-label weight alpha. Returns the finished Run."""
    from framework.engine.run import Run
    from framework.engine.settings import build_model, component_config
    from framework.engine.train import default_callbacks, validate_sections

    dtype = np.dtype(cfg.get("dtype", "float64"))
    data = _in_dtype(splits, dtype)
    validate_sections(cfg)
    name, options = component_config(cfg.model)
    model = build_model(name, options, data.input_dim, data.num_classes, dtype, data.row_shape)
    if soft is not None:
        model = SoftTargetModel(model, soft, T, alpha)
    run = Run.from_config(cfg, run_dir, model=model, splits=data)
    run.callbacks = default_callbacks(run)
    run.fit()
    return run


def distill(teacher, splits, reference_cfg, opts: DistillConfig, out_dir, cost=None) -> dict:
    """Distill the ensemble `teacher` (framework.ensemble.predictor.Ensemble) into a student trained on the shared
    `splits` (float64, preprocessed); the hard-label baseline too when opts.baseline. Student runs go to
    out_dir/student and out_dir/baseline. cost(fn) -> evaluation time of fn relative to one member (or None).

    Returns {"teacher", "temperature", "alpha", "students": [row, ...]}, a row holding name, run_dir, model,
    params, val_acc (best epoch), test_acc, agreement (fraction of test rows where the student's class equals
    the teacher's) and cost."""
    out_dir = pathlib.Path(out_dir)
    cfg = student_config(reference_cfg, opts)
    soft = teacher.model.proba(teacher.params, splits.X_train, opts.temperature)
    teacher_test = np.argmax(teacher.model.scores(teacher.params, splits.X_test), axis=1)
    X_eval = np.concatenate([splits.X_val, splits.X_test])  # the rows whose prediction time is the cost
    jobs = [("student (distilled)", "student", soft)]
    if opts.baseline:
        jobs.append(("student (hard labels)", "baseline", None))
    rows = []
    for name, folder, targets in jobs:
        run = train_student(cfg, splits, out_dir / folder, targets, opts.temperature, opts.alpha)
        metrics = run.summary.get("metrics") or {}
        theta, model = run.best_theta, run.model
        rows.append({
            "name": name, "run_dir": str(out_dir / folder), "model": run.model_name,
            "model_config": OmegaConf.to_container(cfg.model, resolve=True), "params": int(theta.size),
            "val_acc": metrics.get("best_val_acc"), "test_acc": metrics.get("test_acc"),
            "agreement": float(np.mean(np.argmax(model.scores(theta, splits.X_test), axis=1) == teacher_test))
            if len(teacher_test) else None,
            "cost": cost(lambda: model.scores(theta, X_eval)) if cost else None,
        })
    return {"teacher": teacher.name, "temperature": opts.temperature, "alpha": opts.alpha, "students": rows}
