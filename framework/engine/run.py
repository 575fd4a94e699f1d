"""`Run`: the training loop of one run. Built from a config (`Run.from_config`, components injectable), it
holds the model, optimizer, schedules, regularizer, parameter vectors and counters, and runs epochs of steps
(fused or one kernel call at a time) and evaluation; what closes an epoch and the run (history, best epoch,
hopeless check, console lines, summary.json) it inherits from framework.engine.bookkeeping.

The hot loop (one optimizer step) is: gather batch + forward + backward (one jitted call) -> regularizer gradient
-> optimizer update -> EMA update. It allocates nothing; monitoring runs every `monitor.every` steps; the
callbacks (TensorBoard, checkpoints, diagnostics) see the Run object at epoch ends and monitor steps.
"""
from __future__ import annotations

import logging
import math
import pathlib
import signal
import time

import numpy as np
from omegaconf import OmegaConf

from framework.components.data import Splits
from framework.core.errors import ConfigError, DivergedError
from framework.core.lifecycle import PAUSE, STOP, Interrupted, StoppedHopeless, pause_for_tests
from framework.core.registry import OPTIMIZERS, REGULARIZERS, SCHEDULES
from framework.engine import threads
from framework.engine.bookkeeping import Bookkeeping, duration  # noqa: F401  (duration: imported from here too)
from framework.engine.callbacks import Callback
from framework.engine.fused import FusedSteps
from framework.engine.metrics import accuracy, loss_from_scores
from framework.engine.settings import (Settings, build_model, component_config, load_splits, make_rngs,
                                       notice_batch_size)
from framework.kernels import dense as K

log = logging.getLogger("framework")
PROGRESS_SPAN = 256  # fused steps between progress-bar updates (bounds the Python work per step of a tiny model)
TRAIN_EVAL_ROWS = 1000  # train accuracy is measured on this fixed prefix of the training split


class StepNumerics:
    """The numeric calls of a training step: the one seam between train_epoch's own Python (the loop, chunk
    planning, counters, callbacks) and the kernels. A Run calls them through `run.numerics`; the benchmarks give
    one run a no-op subclass (engine.stubs) to time that Python alone."""

    def chunk(self, fused: FusedSteps, b0: int, b1: int, monitor_last: bool) -> tuple[int, float]:
        return fused.steps(b0, b1, monitor_last)

    def loss_grad(self, model, theta, grad, X, y, idx=None, noise=None) -> float:
        return model.loss_grad(theta, grad, X, y, idx, noise)

    def penalty_grad(self, regularizer, theta, grad, mask) -> float:
        return regularizer.penalty_grad(theta, grad, mask)

    def apply_update(self, optimizer, theta, grad, state, lr, momentum, parts: int) -> None:
        threads.apply_update(optimizer, theta, grad, state, lr, momentum, parts)

    def ema_update(self, ema, theta, decay: float, parts: int) -> None:
        threads.ema_update(ema, theta, decay, parts)


class Run(Bookkeeping):
    """Everything a training run holds. Callbacks and checkpoints read (and on resume restore) these fields. The
    end of an epoch and of the run (history, best epoch, hopeless check, console lines, summary.json) are
    Bookkeeping's methods (framework.engine.bookkeeping)."""

    def __init__(self, cfg, run_dir: pathlib.Path | str, data: Splits | None = None, *, model=None):
        """The run of `cfg` in run_dir. data: the splits (default: loaded from cfg.data); model: a model already
        set up for those splits (default: built from cfg.model), e.g. a wrapper around one."""
        self.cfg = cfg
        self.run_dir = pathlib.Path(run_dir)
        self.settings = s = Settings.from_cfg(cfg)
        self.rngs = make_rngs(s.seed)
        self.data_name, data_opts = component_config(cfg.data)
        self.data = data if data is not None else load_splits(self.data_name, data_opts, s.dtype)
        self.model_name, model_opts = component_config(cfg.model)
        self.model = model if model is not None else build_model(
            self.model_name, model_opts, self.data.input_dim, self.data.num_classes, s.dtype, self.data.row_shape)
        self.layout = self.model.layout
        name, opts = component_config(cfg.optimizer)
        self.optimizer_name = name
        self.optimizer = OPTIMIZERS.build(name, **{**opts, "lr": s.lr})
        name, opts = component_config(cfg.schedule)
        self.schedule_name = name
        self.schedule = SCHEDULES.build(name, **opts)
        self.momentum_schedule = None
        if cfg.get("momentum_schedule"):
            name, opts = component_config(cfg.momentum_schedule)
            self.momentum_schedule = SCHEDULES.build(name, config_key="momentum_schedule", **opts)
        name, opts = component_config(cfg.regularizer)
        self.regularizer_name = name
        self.regularizer = REGULARIZERS.build(name, **{**opts, "reg": s.reg})
        self.reg_mask = self.regularizer.mask(self.layout, s.dtype)

        self.theta = self.model.init_params(self.rngs["init"]).astype(s.dtype)
        self.grad = np.zeros_like(self.theta)
        self.opt_state = self.optimizer.init(self.theta)
        self.ema = self.theta.copy() if s.ema_decay > 0 else None
        self.ema_count = 0
        self.bounds = self.layout.bounds()
        self.prev_theta = np.empty_like(self.theta)
        self.update_norms = np.zeros(len(self.layout))
        self.param_norms = np.zeros(len(self.layout))
        self.grad_norms = np.zeros(len(self.layout))

        n = len(self.data.y_train)
        notice_batch_size(s.batch_size, n, self.optimizer.full_batch)
        self.steps_per_epoch = 1 if self.optimizer.full_batch else max(1, math.ceil(n / s.batch_size))
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self.cursor = 0  # batches of the current epoch completed
        self.perm = np.arange(n, dtype=np.int64)
        self.epoch_losses = np.full(self.steps_per_epoch, np.nan)
        self.lr = s.lr
        self.momentum = self.optimizer.momentum
        self.history: dict[str, list] = {}
        self.best_epoch, self.best_val_acc = -1, -math.inf
        self.best_theta = self.theta.copy()
        self.initial_loss = None
        self.hopeless_count = 0  # epochs in a row whose median loss was far above the first loss
        self.status = "running"
        self.message = ""
        self.callbacks: list[Callback] = []
        self.step_callbacks: list[Callback] = []
        self.wall_time = 0.0
        self.train_time = 0.0
        self.summary: dict = {}
        self._config_yaml: str | None = None  # made on first use (config_yaml)
        self._fused_key: tuple | None = None  # the conditions the fused plan was made for
        self._fused: FusedSteps | None = None
        self.numerics = StepNumerics()

    @classmethod
    def from_config(cls, cfg, run_dir: pathlib.Path | str, *, model=None, splits: Splits | None = None) -> "Run":
        """The run of `cfg` in run_dir, with the model and/or data splits injected instead of built from cfg
        (model must be set up for those splits, as `settings.build_model` does)."""
        return cls(cfg, run_dir, data=splits, model=model)

    # --- schedules ---
    def _schedule_time(self, schedule) -> float:
        return float(self.step if schedule.unit == "iteration" else self.epoch)

    def refresh_hyperparameters(self) -> None:
        s = self.settings
        self.lr = self.schedule.value(self._schedule_time(self.schedule), s.lr)
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ConfigError("schedule", self.schedule_name, "a schedule whose learning rate stays >= 0",
                              f"It produced lr={self.lr} at t={self._schedule_time(self.schedule)}.")
        if self.momentum_schedule is not None and self.optimizer.momentum_field:
            self.momentum = self.momentum_schedule.value(self._schedule_time(self.momentum_schedule),
                                                         self.optimizer.momentum)

    def config_yaml(self) -> str:
        """The run's config as resolved YAML, made once and shared by the checkpoints and TensorBoard."""
        text = self._config_yaml
        if text is None:
            text = self._config_yaml = OmegaConf.to_yaml(self.cfg, resolve=True)
        return text

    # --- evaluation ---
    def eval_theta(self) -> np.ndarray:
        return self.ema if self.settings.eval_with == "ema" else self.theta

    def evaluate(self, theta, split: str, loss: bool = True) -> tuple[float, float]:
        """(mean data loss, accuracy) of theta on a split: "train" is its first TRAIN_EVAL_ROWS rows (a fixed
        subsample: the epoch's train loss is the mean of its step losses instead), "val" and "test" are whole.
        loss=False skips the loss (NaN in its place): the train accuracy needs none."""
        d = self.data
        X, y = {"train": (d.X_train[:TRAIN_EVAL_ROWS], d.y_train[:TRAIN_EVAL_ROWS]),
                "val": (d.X_val, d.y_val), "test": (d.X_test, d.y_test)}[split]
        if len(y) == 0:
            return float("nan"), float("nan")
        scores = self.model.scores(theta, X)
        return loss_from_scores(scores, y, self.model.loss_kind) if loss else float("nan"), accuracy(scores, y)

    def record(self, key: str, value) -> None:
        self.history.setdefault(key, []).append(float(value))

    def last(self, key: str, default=float("nan")) -> float:
        values = self.history.get(key)
        return values[-1] if values else default

    # --- the loop ---
    def _diverged(self, loss: float) -> None:
        self.status = "diverged"
        self.message = (f"Loss became {loss} at epoch {self.epoch + 1}, step {self.step + 1} (lr={self.lr:g}). "
                        "The run stopped as diverged: lower the learning rate (notes 3.1: a very high "
                        "learning rate makes the loss explode) or check the data scale.")
        raise DivergedError(self.message)

    def _check_loss(self, loss: float) -> None:
        if not math.isfinite(loss):
            self._diverged(loss)
        if self.initial_loss is None:
            self.initial_loss = loss
        s = self.settings
        if s.loss_multiple > 0 and self.step >= s.grace_steps and loss > s.loss_multiple * self.initial_loss:
            # finite but far too high: hopeless, not diverged (the per-step rule of early_stop, notes 5.7)
            self.status = "stopped_hopeless"
            self.message = (f"Loss {loss:.4g} exceeds {s.loss_multiple:g} x the initial loss "
                            f"{self.initial_loss:.4g} after {self.step} steps: stopped early as hopeless "
                            "(early_stop.loss_multiple; notes 5.7).")
            raise StoppedHopeless(self.message)

    def _full_batch_loss_grad(self, theta, grad) -> float:
        d = self.data
        loss = self.numerics.loss_grad(self.model, theta, grad, d.X_train, d.y_train)
        if self.regularizer.active:
            loss += self.numerics.penalty_grad(self.regularizer, theta, grad, self.reg_mask)
        return float(loss)

    def train_epoch(self, progress=None) -> None:
        """One epoch of minibatch steps from self.cursor (resume may start mid-epoch)."""
        d, s, opt = self.data, self.settings, self.optimizer
        per_iteration = self.per_iteration_schedules
        every = s.monitor_every
        if self.cursor == 0:
            self.perm = self.rngs["order"].permutation(len(d.y_train)).astype(np.int64)
            self.epoch_losses[:] = np.nan
        if opt.full_batch:
            losses = opt.run_epoch(self.theta, self.opt_state, self._full_batch_loss_grad, self.lr)
            for loss in losses:
                self._check_loss(loss)
            if self.ema is not None:  # one average update per full-batch epoch
                self._update_ema()
            self.epoch_losses = np.asarray(losses, dtype=np.float64) if len(losses) else np.full(1, np.nan)
            self.step += 1
            self.cursor = 1
            return
        tick = max(1, self.steps_per_epoch // 20)
        last = self.steps_per_epoch - 1
        fused = self.fused_plan() if s.fused_steps else None
        b = self.cursor
        while b <= last:
            if fused is not None and self.initial_loss is not None:
                # the steps up to and including the next monitor step, or up to a progress tick, in one call
                stop = last + 1
                watch = None
                if every:
                    watch = b + (-self.step) % every  # the next step with step % every == 0
                    stop = min(stop, watch + 1)
                if progress is not None:  # progress moves at chunk ends, at least every PROGRESS_SPAN steps
                    span = max(tick, PROGRESS_SPAN)
                    stop = min(stop, (b // span + 1) * span)
                monitor_last = watch == stop - 1
                done, loss = self.numerics.chunk(fused, b, stop, monitor_last)
                self.step += done
                self.cursor = b + done
                if b + done < stop:
                    self._check_loss(loss)  # raises: the chunk stopped before this step's update
                if monitor_last:
                    for cb in self.callbacks:
                        cb.on_monitor(self)
                b += done
                if progress is not None:
                    progress.update(b - progress.n)
                    progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
            else:
                self._plain_step(b, per_iteration, progress, tick)
                b += 1
            if PAUSE:
                pause_for_tests("step")
            if STOP.received and b <= last:  # a safe point: every array and counter is at a step boundary
                raise _SafeStop()

    def fused_plan(self) -> FusedSteps | None:
        """The run's fused path, made once (its conditions do not change during a run)."""
        key = (len(self.step_callbacks), type(self.model), type(self.regularizer), type(self.optimizer))
        if self._fused_key != key:
            self._fused_key, self._fused = key, FusedSteps.plan(self)
        return self._fused

    def _plain_step(self, b: int, per_iteration: bool, progress, tick: int) -> None:
        """Step b of the epoch with one Python call per kernel (any plugin; monitor steps)."""
        model, opt, theta, grad = self.model, self.optimizer, self.theta, self.grad
        state, mask, reg_active = self.opt_state, self.reg_mask, self.regularizer.active
        B, X, y, perm, rng = self.settings.batch_size, self.data.X_train, self.data.y_train, self.perm, \
            self.rngs["dropout"]
        every = self.settings.monitor_every
        if per_iteration:
            self.refresh_hyperparameters()
        idx = perm[b * B:(b + 1) * B]
        noise = model.sample_noise(rng, idx.size)
        numerics = self.numerics
        loss = numerics.loss_grad(model, theta, grad, X, y, idx, noise)
        if reg_active:
            loss += numerics.penalty_grad(self.regularizer, theta, grad, mask)
        self._check_loss(loss)
        self.epoch_losses[b] = loss
        monitor = every and self.step % every == 0
        if monitor:
            np.copyto(self.prev_theta, theta)
        parts = self.model.step_threads(idx.size)  # a wide model: the update and EMA split over its threads too
        numerics.apply_update(opt, theta, grad, state, self.lr, self.momentum, parts)
        if self.has_projection:
            self.regularizer.project(theta, self.layout)
        if self.ema is not None:
            self._update_ema(parts)
        self.step += 1
        self.cursor = b + 1
        if monitor:
            K.block_diff_norms(theta, self.prev_theta, self.bounds, self.update_norms)
            K.block_norms(theta, self.bounds, self.param_norms)
            K.block_norms(grad, self.bounds, self.grad_norms)
            for cb in self.callbacks:
                cb.on_monitor(self)
        if self.step_callbacks:
            with STOP.critical():  # checkpoint writes
                for cb in self.step_callbacks:
                    cb.on_step(self)
        if progress is not None and (b % tick == 0 or b == self.steps_per_epoch - 1):
            progress.update(b + 1 - progress.n)
            progress.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def _update_ema(self, parts: int = 1) -> None:
        """ema <- d*ema + (1-d)*theta, d from kernels.ema_decay (warmed up over the first updates)."""
        s, n = self.settings, self.ema_count
        self.numerics.ema_update(self.ema, self.theta, K.ema_decay(s.ema_decay, s.ema_warmup, n), parts)
        self.ema_count = n + 1

    @property
    def per_iteration_schedules(self) -> bool:
        """Whether lr or momentum change every step (a schedule with unit: iteration), not once per epoch."""
        return self.schedule.unit == "iteration" or (
            self.momentum_schedule is not None and self.momentum_schedule.unit == "iteration")

    def schedule_names(self) -> dict:
        """{"lr": name, "momentum": name} of the run's schedules (momentum only when one is set)."""
        names = {"lr": self.schedule_name}
        if self.momentum_schedule is not None:
            names["momentum"] = component_config(self.cfg.momentum_schedule)[0]
        return names

    @property
    def has_projection(self) -> bool:
        """Whether the regularizer projects the weights after each update (max-norm)."""
        from framework.components.regularize import Regularizer
        return type(self.regularizer).project is not Regularizer.project

    def fit(self) -> dict:
        """Train for the configured epochs (from wherever the run stands) and return the summary.

        Raises DivergedError (NaN/inf loss), StoppedHopeless (stop_hopeless) or Interrupted (SIGINT, SIGTERM,
        SIGHUP: the loop stops at the next step boundary, callbacks' on_interrupt save that point); summary.json
        records each end."""
        from tqdm import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        self.status = "running"
        for cb in self.callbacks:
            cb.on_train_start(self)
        t0 = None  # start of the epoch in progress
        epoch_times: list[float] = []
        with STOP.training():
            try:
                while self.epoch < self.settings.epochs:
                    if STOP.received:  # a request from start-up, or one that came with an epoch end
                        raise _SafeStop()
                    epoch_start = time.perf_counter()
                    self.refresh_hyperparameters()
                    with tqdm(total=self.steps_per_epoch, initial=self.cursor, leave=False, disable=None,
                              desc=f"epoch {self.epoch + 1}/{self.settings.epochs}", unit="step") as bar:
                        t0 = time.perf_counter()
                        self.train_epoch(bar)
                        self.train_time += time.perf_counter() - t0
                        t0 = None
                    self.end_epoch()
                    epoch_times.append(time.perf_counter() - epoch_start)
                    log.info("%s", self.epoch_line(epoch_times))
                    self._check_hopeless()
                self.status = "ok"
            except (DivergedError, StoppedHopeless):
                self.wall_time += time.perf_counter() - start
                self.finish()
                raise
            except (_SafeStop, Interrupted, KeyboardInterrupt) as exc:
                safe = isinstance(exc, _SafeStop)
                signum = STOP.received or getattr(exc, "signum", 0) or signal.SIGINT
                self.status = "interrupted"
                if safe:  # the state is whole: let a checkpoint keep this exact point
                    with STOP.critical():
                        for cb in self.callbacks:
                            cb.on_interrupt(self)
                if t0 is not None:  # the interrupted epoch's steps (after on_interrupt, which counts them itself)
                    self.train_time += time.perf_counter() - t0
                self.message = self._interrupt_message(signum, safe)
                self.wall_time += time.perf_counter() - start
                self.finish()
                raise Interrupted(signum, self.message) from None
            except BaseException as exc:
                self.status = "failed"
                self.message = f"{type(exc).__name__}: {exc}"
                self.wall_time += time.perf_counter() - start
                self.finish()
                raise
            self.wall_time += time.perf_counter() - start
            summary = self.finish()
        m = summary["metrics"]
        if self.optimizer.full_batch:  # one "step" per epoch: steps/s would say nothing
            work = f"{self.step} full-batch epochs, {int(self.opt_state.count[0])} {self.optimizer_name} iterations"
        else:
            work = f"{self.step} steps, {summary['steps_per_s'] or 0:.0f} steps/s"
        log.info("done in %.1f s: best val acc %.4f at epoch %s, its test acc %.4f (%s). "
                 "Run folder: %s (view: tensorboard --logdir %s)", self.wall_time, m.get("best_val_acc") or math.nan,
                 summary["best_epoch"], m.get("test_acc") or math.nan, work, self.run_dir, self.run_dir)
        return summary


class _SafeStop(Exception):
    """Raised by the loop at a step boundary after a stop signal; Run.fit turns it into Interrupted."""
