"""`Bookkeeping`: the half of `Run` (framework.engine.run) that closes epochs and runs. At an epoch end: evaluate,
record the history, keep the best epoch, feed plateau schedules, call the callbacks, stop a hopeless run, and write
the console line; at the run's end: the interrupt message with the command that continues it, the test score of the
best epoch and summary.json. A mixin: its methods read and write the fields Run.__init__ makes.
"""
from __future__ import annotations

import logging
import math
import os
import shlex

import numpy as np

from framework.core.files import write_json_atomic
from framework.core.lifecycle import STOP, StoppedHopeless, signal_name
from framework.engine.settings import flat_hparams

log = logging.getLogger("framework")


class Bookkeeping:
    """End-of-epoch and end-of-run methods of Run (mixed in; see framework.engine.run.Run for the fields)."""

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




def duration(seconds: float) -> str:
    """Wall time for the console: 0.42 s, 12 s, 3 min 05 s, 1 h 02 min."""
    if seconds < 10:
        return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
