"""`Run`: the training loop of one run. Built from a config (`Run.from_config`, components injectable), it
holds the model, optimizer, schedules, regularizer, parameter vectors and counters, and runs epochs of steps
(fused or one kernel call at a time), evaluation, the best-epoch record and summary.json.

The hot loop (one optimizer step) is: gather batch + forward + backward (one jitted call) -> regularizer gradient
-> optimizer update -> EMA update. It allocates nothing; monitoring runs every `monitor.every` steps; the
callbacks (TensorBoard, checkpoints, diagnostics) see the Run object at epoch ends and monitor steps.
"""
from __future__ import annotations

import logging
import math
import os
import pathlib
import shlex
import signal
import time

import numpy as np
from omegaconf import OmegaConf

from framework.components.data import Splits
from framework.core.errors import ConfigError, DivergedError
from framework.core.files import write_json_atomic
from framework.core.lifecycle import PAUSE, STOP, Interrupted, StoppedHopeless, pause_for_tests, signal_name
from framework.core.registry import OPTIMIZERS, REGULARIZERS, SCHEDULES
from framework.engine import threads
from framework.engine.callbacks import Callback
from framework.engine.fused import FusedSteps
from framework.engine.metrics import accuracy, loss_from_scores
from framework.engine.settings import (Settings, build_model, component_config, flat_hparams, load_splits,
                                       make_rngs, notice_batch_size)
from framework.kernels import dense as K

log = logging.getLogger("framework")
PROGRESS_SPAN = 256  # fused steps between progress-bar updates (bounds the Python work per step of a tiny model)
TRAIN_EVAL_ROWS = 1000  # train accuracy is measured on this fixed prefix of the training split


class Run:
    """Everything a training run holds. Callbacks and checkpoints read (and on resume restore) these fields."""

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
        loss = self.model.loss_grad(theta, grad, d.X_train, d.y_train)
        if self.regularizer.active:
            loss += self.regularizer.penalty_grad(theta, grad, self.reg_mask)
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
                done, loss = fused.steps(b, stop, monitor_last)
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
        loss = model.loss_grad(theta, grad, X, y, idx, noise)
        if reg_active:
            loss += self.regularizer.penalty_grad(theta, grad, mask)
        self._check_loss(loss)
        self.epoch_losses[b] = loss
        monitor = every and self.step % every == 0
        if monitor:
            np.copyto(self.prev_theta, theta)
        parts = self.model.step_threads(idx.size)  # a wide model: the update and EMA split over its threads too
        threads.apply_update(opt, theta, grad, state, self.lr, self.momentum, parts)
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
        """ema <- d*ema + (1-d)*theta, with d warmed up as min(decay, (1+n)/(10+n)) over n updates."""
        s, n = self.settings, self.ema_count
        decay = min(s.ema_decay, (1.0 + n) / (10.0 + n)) if s.ema_warmup else s.ema_decay
        threads.ema_update(self.ema, self.theta, decay, parts)
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

    def end_epoch(self) -> None:
        """Evaluate, record history, track the best epoch, feed plateau schedules."""
        self.epoch += 1
        self.cursor = 0
        losses = self.epoch_losses[np.isfinite(self.epoch_losses)]
        self.record("epoch", self.epoch)
        self.record("step", self.step)
        self.record("train/loss", losses.mean() if losses.size else float("nan"))
        _, train_acc = self.evaluate(self.theta, "train", loss=False)
        val_loss, val_acc = self.evaluate(self.theta, "val")
        self.record("train/acc", train_acc)
        self.record("val/loss", val_loss)
        self.record("val/acc", val_acc)
        self.record("lr", self.lr)
        self.record("momentum", self.momentum if self.momentum is not None else float("nan"))
        if self.ema is not None:
            ema_loss, ema_acc = self.evaluate(self.ema, "val")
            self.record("val/ema_loss", ema_loss)
            self.record("val/ema_acc", ema_acc)
        score = self.last("val/ema_acc") if self.settings.eval_with == "ema" else val_acc
        if score > self.best_val_acc:
            self.best_val_acc, self.best_epoch = score, self.epoch
            np.copyto(self.best_theta, self.eval_theta())
        self.schedule.observe(score)
        if self.momentum_schedule is not None:
            self.momentum_schedule.observe(score)
        with STOP.critical():  # checkpoint writes
            for cb in self.callbacks:
                cb.on_epoch_end(self)

    def _check_hopeless(self) -> None:
        """Stop when the median step loss of `stop_hopeless.epochs` epochs in a row exceeded
        `stop_hopeless.loss_multiple` x the first loss (notes 3.1: the learning rate is too high). A median over
        a whole epoch, so a spike or a slow start never triggers it; NaN/inf are _check_loss's (diverged)."""
        s = self.settings
        if not s.hopeless_multiple or not self.initial_loss or self.initial_loss <= 0:
            return
        losses = self.epoch_losses[np.isfinite(self.epoch_losses)]
        median = float(np.median(losses)) if losses.size else math.nan
        limit = s.hopeless_multiple * self.initial_loss
        self.hopeless_count = self.hopeless_count + 1 if median > limit else 0
        if self.hopeless_count < s.hopeless_epochs:
            return
        epochs = f"epoch {self.epoch}" if s.hopeless_epochs == 1 else \
            f"epochs {self.epoch - s.hopeless_epochs + 1}-{self.epoch}"
        self.status = "stopped_hopeless"
        self.message = (f"The loss stayed far above where it started: median step loss {median:.4g} in {epochs}, "
                        f"{median / self.initial_loss:.3g} x the first loss {self.initial_loss:.4g} (limit "
                        f"stop_hopeless.loss_multiple={s.hopeless_multiple:g}). Stopped as hopeless: the learning "
                        f"rate (lr={s.lr:g}{f', {self.lr:g} in this epoch' if self.lr != s.lr else ''}) is likely "
                        f"too high, lower it (e.g. lr={s.lr / 10:g}; notes 3.1: a loss far above the initial loss "
                        "means the learning rate is too high).")
        raise StoppedHopeless(self.message)

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

    def _interrupt_message(self, signum: int, safe: bool) -> str:
        """What stopped, where, and the exact command that continues the run (when a checkpoint exists)."""
        where = (f"epoch {self.epoch + 1}, step {self.step} (batch {self.cursor} of {self.steps_per_epoch})"
                 if self.cursor else f"the end of epoch {self.epoch}, step {self.step}" if self.step
                 else "its start, before the first step")
        how = "at a safe point" if safe else "at once (a second signal)"
        text = f"{signal_name(signum)}: the run stopped {how} at {where}; summary.json says 'interrupted'."
        if (self.run_dir / "checkpoints" / "last.h5").is_file():
            folder = os.path.relpath(self.run_dir)
            if folder.startswith(".."):
                folder = str(self.run_dir.resolve())
            text += f" Continue it with: python -m framework {shlex.quote(f'resume={folder}')}"
        else:
            text += " No checkpoint was written (checkpoint=null, or none yet): run the command again."
        return text

    def epoch_line(self, epoch_times: list[float]) -> str:
        """The console line of the epoch just ended: losses and accuracies, lr (and the scheduled momentum, or
        what a full-batch optimizer did), this epoch's wall time and the estimated time to the last epoch.
        epoch_times: wall seconds of the epochs of this session so far."""
        opt = self.optimizer
        parts = [f"epoch {self.epoch:3d}/{self.settings.epochs}", f"train loss {self.last('train/loss'):.4f}",
                 f"train acc {self.last('train/acc'):.4f}", f"val loss {self.last('val/loss'):.4f}",
                 f"val acc {self.last('val/acc'):.4f}"]
        if self.ema is not None:
            parts.append(f"ema val acc {self.last('val/ema_acc'):.4f}")
        if opt.uses_lr:
            parts.append(f"lr {self.lr:.3g}")
        if self.momentum_schedule is not None and opt.momentum_field and self.momentum is not None:
            parts.append(f"{opt.momentum_field} {self.momentum:.3g}")
        summary = opt.epoch_summary()
        if summary:
            parts.append(summary)
        # the first epoch of a process also loads (or compiles) kernels: estimate from the later ones
        typical = epoch_times[1:] or epoch_times
        left = (self.settings.epochs - self.epoch) * sum(typical) / len(typical)
        parts.append(f"{duration(epoch_times[-1])}/epoch" + (f", ETA {duration(left)}" if left > 0 else ""))
        return "  ".join(parts)

    def finish(self) -> dict:
        """Test score of the best epoch, summary.json, callbacks' on_train_end. Returns the summary."""
        with STOP.critical():  # a signal never cuts the summary short
            return self._finish()

    def _finish(self) -> dict:
        test_loss = test_acc = float("nan")
        if self.best_epoch > 0 and len(self.data.y_test):
            test_loss, test_acc = self.evaluate(self.best_theta, "test")
        metrics = {k: self.last(k) for k in ("train/loss", "train/acc", "val/loss", "val/acc",
                                             "val/ema_acc") if k in self.history}
        metrics.update({"best_val_acc": self.best_val_acc if self.best_epoch > 0 else float("nan"),
                        "test_acc": test_acc, "test_loss": test_loss})
        self.summary = {
            "status": self.status,
            "message": self.message,
            "metrics": {k: (None if not math.isfinite(v) else v) for k, v in metrics.items()},
            "best_epoch": self.best_epoch if self.best_epoch > 0 else None,
            "epochs_completed": self.epoch,
            "steps": self.step,
            "wall_time_s": self.wall_time,
            "train_time_s": self.train_time,
            "steps_per_s": self.step / self.train_time if self.train_time > 0 else None,
            "seed": self.settings.seed,
            "model": self.model_name, "optimizer": self.optimizer_name, "data": self.data_name,
            "data_sizes": self.data.describe(),
            "paths": {"run_dir": ".", "checkpoints": "checkpoints", "tensorboard": "."},
            "hparams": flat_hparams(self.cfg),
        }
        for cb in self.callbacks:
            try:
                cb.on_train_end(self)
            except Exception as exc:  # a broken logger must not hide the run's own outcome
                log.warning("callback %s failed at the end of the run: %s", type(cb).__name__, exc)
        write_json_atomic(self.run_dir / "summary.json", self.summary)
        from framework.kernels.gemm_choice import record

        write_json_atomic(self.run_dir / "gemm.json", record())  # which GEMM each product ran on, and why
        return self.summary


class _SafeStop(Exception):
    """Raised by the loop at a step boundary after a stop signal; Run.fit turns it into Interrupted."""

def duration(seconds: float) -> str:
    """Wall time for the console: 0.42 s, 12 s, 3 min 05 s, 1 h 02 min."""
    if seconds < 10:
        return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
