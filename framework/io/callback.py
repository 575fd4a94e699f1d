"""`CheckpointCallback`: publishes a run's checkpoints (epoch files, last.h5, best.h5) so that they agree with
each other after a kill at any moment, prunes the epoch files to the best k, and `make_callback(run)`, the hook
the training job calls to attach it.
"""
from __future__ import annotations

import logging
import math
import os
import pathlib
import re
import threading
import time


from framework.core.errors import CheckpointError
from framework.engine.callbacks import Callback
from framework.engine.run import Run
from framework.io.checkpoint import CheckpointSettings, copy_atomic, read_checkpoint, run_info, save
from framework.io.hdf5 import finish_atomic

log = logging.getLogger("framework")

EPOCH_FILE = re.compile(r"^epoch(\d{3,})_val(\d+\.\d+|nan|-?inf)\.h5$")
TMP_FILE = re.compile(r"^\.(.+)\.(\d+)\.tmp$")  # .<name>.<pid>.tmp, a write in progress (or killed)


class CheckpointCallback(Callback):
    """Publishes a run's checkpoints so that, after a kill at any moment, the files agree with each other.

    last.h5 (kind "resume") is the commit point: what a resume continues from. At an epoch end, in this order:
      1. epochEEE_valX.XXXX.h5 (kind "weights"), every `every` epochs, but only if the file would survive the
         pruning: its score ranks in the `keep_top_k` best, or it ends a warm-restart cycle;
      2. best.h5, when the best epoch improved and step 1 wrote its file: a hard link to that file;
      3. last.h5: after the first and the final epoch; when the best epoch improved without an epoch file
         (then best.h5 is written from the run's state in step 4, after the commit); otherwise whenever the
         time spent writing checkpoints stays within `max_overhead` of the run's time;
      4. best.h5 as its own weights file, in the case just named;
      5. pruning to the `keep_top_k` best of the epoch files up to the commit (plus the cycle ends).
    Mid-epoch, last.h5 also every `every_steps` optimizer steps. So files newer than last.h5 are provisional:
    a kill can leave epoch files and a best.h5 ahead of it (steps 1-2), or best.h5 behind it (between 3 and 4),
    and the file of last.h5's best epoch always exists (pruning never counts provisional files). A resumed run
    (`reconcile`) deletes the provisional epoch files (it trains those epochs again, bit for bit) and points
    best.h5 back at the best epoch of its checkpoint."""

    def __init__(self, settings: CheckpointSettings):
        self.settings = settings
        self.next_step = 0
        self.writes = 0
        self.write_time = 0.0
        self.folder: pathlib.Path | None = None
        self.config_yaml = self.info_json = ""
        self.cycle_ends: set[int] = set()
        self._t0 = self._wall0 = 0.0
        self._epoch_t0 = 0.0
        self._last_cost = 0.0  # seconds the latest last.h5 write took
        self._committed = 0  # the epochs completed in the state last.h5 holds
        self._publishing: threading.Thread | None = None  # last.h5's fsync + rename (+ pruning), in the background
        self._publish_error: BaseException | None = None
        self._epoch_files: dict[int, pathlib.Path] | None = None  # the folder's epoch files, None: list it again

    # timings as of now, so a mid-epoch checkpoint resumes the run's clocks where they stood
    def _clocks(self, run: Run, mid_epoch: bool) -> dict:
        now = time.perf_counter()
        train = run.train_time + (now - self._epoch_t0 if mid_epoch else 0.0)
        return {"wall_time": self._wall0 + now - self._t0, "train_time": train, "config_yaml": self.config_yaml,
                "info_json": self.info_json}

    def on_train_start(self, run: Run) -> None:
        self.folder = run.run_dir / "checkpoints"
        self.config_yaml = run.config_yaml()  # once per run (shared with TensorBoard), not per write
        self.info_json = run_info(run)
        import h5py  # noqa: F401  (imported here so the first write's timing is the write's)
        if self.settings.keep_top_k and self.settings.keep_cycle_ends:
            from framework.components.schedule import cycle_end_epochs

            self.cycle_ends = set(cycle_end_epochs(run.cfg, run.steps_per_epoch, run.settings.epochs))
            self.cycle_ends.add(run.settings.epochs)  # the end of the last cycle
            if len(self.cycle_ends) == 1:
                self.cycle_ends = set()  # no restarts: no cycles to keep
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.folder)
        self._t0 = self._epoch_t0 = time.perf_counter()
        self._wall0 = run.wall_time
        self._committed = run.epoch
        self._resume_step = run.step if run.step > 0 else -1  # a resumed run starts from what last.h5 holds
        if run.step > 0:  # a resumed run: make the files agree with the checkpoint it resumed from
            self.reconcile(run)
        every = self.settings.every_steps
        self.next_step = (run.step // every + 1) * every if every else 0

    def reconcile(self, run: Run) -> None:
        """Undo what a killed session published beyond the state `run` resumed from, and finish what it left
        half done: epoch files newer than run.epoch go (this run writes them again), best.h5 is made the file
        of run.best_epoch, and the epoch files are pruned."""
        for epoch, path in epoch_files(self.folder).items():
            if epoch > run.epoch:
                log.info("removing %s: written after the checkpoint this run resumes from", path.name)
                path.unlink(missing_ok=True)
        best = self.folder / "best.h5"
        if run.best_epoch > 0 and _epoch_of(best) != run.best_epoch:
            source = epoch_files(self.folder).get(run.best_epoch)
            t = time.perf_counter()
            if source is not None:
                copy_atomic(source, best)
            elif run.best_epoch == run.epoch and run.cursor == 0:  # the resumed state is the best epoch's
                save(run, best, kind="weights", score=self._score(run), **self._clocks(run, mid_epoch=False))
            else:  # a loose checkpoint resumed into a new folder (the publication order never leaves this)
                if best.exists():
                    log.warning("best.h5 does not hold the best epoch %d and no file of that epoch is left to "
                                "restore it from; it is replaced at the next improvement.", run.best_epoch)
                t = None
            if t is not None:
                log.info("best.h5 restored to epoch %d (a kill had interrupted its update)", run.best_epoch)
                self.write_time += time.perf_counter() - t
                self.writes += 1
        if self.settings.keep_top_k:
            prune_epoch_files(self.folder, self.settings.keep_top_k, keep=self.cycle_ends, upto=run.epoch)

    def _score(self, run: Run) -> float:
        return run.last("val/ema_acc") if run.settings.eval_with == "ema" else run.last("val/acc")

    def _timed_save(self, run: Run, path: pathlib.Path, kind: str, **extra) -> float:
        self.wait_for_publish()  # files are published in the order written
        t = time.perf_counter()
        save(run, path, kind=kind, **extra)
        if kind == "resume":
            self._resume_step = run.step  # the step last.h5 now holds
        took = time.perf_counter() - t
        self.write_time += took
        self.writes += 1
        return took

    def _commit_last(self, run: Run, prune_upto: int | None = None, **extra) -> float:
        """Write last.h5's temp file here (it reads the run's state) and publish it in a background thread
        (fsync, rename, then the pruning of epoch files up to `prune_upto`, which must follow the commit):
        training goes on meanwhile. wait_for_publish joins it before the next write and at the end of the run,
        so files are still published in the order written; a kill before the rename leaves the old last.h5.
        Returns the seconds training waited (the write budget counts these)."""
        self.wait_for_publish()
        t = time.perf_counter()

        def publish(tmp, path):
            self._publishing = threading.Thread(target=self._publish, args=(tmp, path, prune_upto),
                                                name="framework-checkpoint")
            self._publishing.start()

        save(run, self.folder / "last.h5", kind="resume", publish=publish, **extra)
        self._resume_step = run.step  # the step last.h5 holds once published (on_interrupt joins first)
        took = time.perf_counter() - t
        self.write_time += took
        self.writes += 1
        return took

    def _publish(self, tmp: pathlib.Path, path: pathlib.Path, prune_upto: int | None) -> None:
        try:
            try:
                finish_atomic(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if prune_upto is not None:
                prune_epoch_files(self.folder, self.settings.keep_top_k, keep=self.cycle_ends, upto=prune_upto)
        except BaseException as exc:  # raised in the training thread by wait_for_publish
            self._publish_error = exc

    def wait_for_publish(self) -> None:
        """Join the background publication of last.h5, if any; an error it met (a full disk) is raised here."""
        if self._publishing is None:
            return
        t = time.perf_counter()
        self._publishing.join()
        self._publishing = None
        self._epoch_files = None  # pruning may have removed some
        self.write_time += time.perf_counter() - t
        error, self._publish_error = self._publish_error, None
        if error is not None:
            raise error

    def _listed_epoch_files(self) -> dict[int, pathlib.Path]:
        """epoch_files(folder), listed again only after this callback changed the folder (nothing else writes
        epoch files into a run's folder while it trains)."""
        if self._epoch_files is None:
            self._epoch_files = epoch_files(self.folder)
        return self._epoch_files

    def on_step(self, run: Run) -> None:
        if run.step >= self.next_step:  # the only per-step cost
            self.next_step = run.step + self.settings.every_steps
            if run.cursor < run.steps_per_epoch:  # at an epoch's last step the epoch-end write follows at once
                self._last_cost = self._commit_last(run, **self._clocks(run, mid_epoch=True))
                self._committed = run.epoch

    def _earns_epoch_file(self, epoch: int, score: float) -> bool:
        """Whether an epoch file written now would survive prune_epoch_files (so a doomed one is not written)."""
        k = self.settings.keep_top_k
        if not k or epoch in self.cycle_ends:
            return True
        mine = _rank_score(score)
        ahead = sum(1 for e, p in self._listed_epoch_files().items()
                    if e < epoch and _rank_score(_name_score(p)) >= mine)  # ties: the earlier epoch ranks first
        return ahead < k

    def _last_is_due(self, run: Run, now: float) -> bool:
        """The final epoch, the first (a kill must find something to resume from), or a routine write that keeps
        all writes within max_overhead of the time so far."""
        budget = self.settings.max_overhead
        return run.epoch >= run.settings.epochs or not budget or self._committed == 0 or \
            self.write_time + self._last_cost <= budget * (now - self._t0)

    def on_epoch_end(self, run: Run) -> None:
        s = self.settings
        self.wait_for_publish()  # the previous commit and its pruning are done: the listing below is current
        score = self._score(run)
        extra = {"score": score, **self._clocks(run, mid_epoch=False)}
        improved = run.best_epoch == run.epoch
        best = self.folder / "best.h5"
        epoch_file = None
        if s.every and run.epoch % s.every == 0 and self._earns_epoch_file(run.epoch, score):
            epoch_file = self.folder / f"epoch{run.epoch:03d}_val{score:.4f}.h5"
            self._timed_save(run, epoch_file, "weights", **extra)
            self._epoch_files = None
            if improved:
                t = time.perf_counter()
                copy_atomic(epoch_file, best)
                self.write_time += time.perf_counter() - t
        committed = pruned_after_commit = False
        best_follows = improved and epoch_file is None  # best.h5 from the state, after the commit (step 4)
        if best_follows or self._last_is_due(run, time.perf_counter()):
            # the pruning follows the commit: in the background with it, unless best.h5 is written in between
            pruned_after_commit = bool(s.keep_top_k) and not best_follows
            self._last_cost = self._commit_last(run, run.epoch if pruned_after_commit else None, **extra)
            self._committed, committed = run.epoch, True
            if run.epoch >= run.settings.epochs:
                self.wait_for_publish()  # the final commit: an error it meets is the run's, not a warning
        if best_follows:
            self._timed_save(run, best, "weights", **extra)  # joins the commit first
        if s.keep_top_k and (epoch_file is not None or committed) and not pruned_after_commit:
            prune_epoch_files(self.folder, s.keep_top_k, keep=self.cycle_ends, upto=self._committed)
            self._epoch_files = None
        self._epoch_t0 = time.perf_counter()

    def on_interrupt(self, run: Run) -> None:
        # a signal stopped the loop at a step boundary: keep that exact point, unless last.h5 holds it already
        # (under the write budget an epoch end need not have written it)
        self.wait_for_publish()
        if run.step in (0, self._resume_step):  # nothing trained yet, or already saved
            return
        mid_epoch = 0 < run.cursor < run.steps_per_epoch
        extra = {} if mid_epoch else {"score": self._score(run)}
        self._timed_save(run, self.folder / "last.h5", "resume", **extra, **self._clocks(run, mid_epoch=mid_epoch))
        self._committed = run.epoch

    def on_train_end(self, run: Run) -> None:
        # No write here: after an interrupt or divergence the state may be mid-update; last.h5 stays the last
        # consistent point. Its publication is finished first. Record what checkpointing cost.
        self.wait_for_publish()
        run.summary["checkpoints"] = {"last": "checkpoints/last.h5", "best": "checkpoints/best.h5",
                                      "writes": self.writes, "write_time_s": self.write_time}


def _epoch_of(path: pathlib.Path) -> int | None:
    """The epoch a checkpoint file holds, or None when it is missing or unreadable."""
    try:
        return read_checkpoint(path)[0]["epoch"] if path.is_file() else None
    except CheckpointError:
        return None


def remove_stale_temp_files(folder: pathlib.Path) -> None:
    """Delete temp files of writes killed mid-way (their process is gone); live writers' files stay."""
    for p in folder.iterdir():
        m = TMP_FILE.match(p.name)
        if not m or int(m.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue  # its writer still runs
        except ProcessLookupError:
            pass
        except (PermissionError, OSError):
            continue
        p.unlink(missing_ok=True)


def epoch_files(folder: pathlib.Path) -> dict[int, pathlib.Path]:
    """{epoch: path} of the epochEEE_valX.XXXX.h5 files in `folder`."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    return {int(m.group(1)): folder / n for n in names if (m := EPOCH_FILE.match(n))}


def _name_score(path: pathlib.Path) -> float:
    return float(EPOCH_FILE.match(path.name).group(2))


def _rank_score(score: float) -> float:
    """The score as pruning ranks it (as printed in the name: 4 decimals; NaN last)."""
    score = float(f"{score:.4f}")
    return score if math.isfinite(score) else -math.inf


def prune_epoch_files(folder: pathlib.Path, k: int, keep=(), upto: int | None = None) -> list[pathlib.Path]:
    """Keep the k epoch files with the best validation score in their name (ties: the earlier epoch) and the
    files of the epochs in `keep`; delete the others. Only files of epochs <= `upto` (when given) take part.
    Never touches last.h5, best.h5 or temp files."""
    files = {e: p for e, p in epoch_files(folder).items() if upto is None or e <= upto}
    ranked = sorted(files.items(), key=lambda item: (-_rank_score(_name_score(item[1])), item[0]))
    removed = []
    for epoch, p in ranked[k:]:
        if epoch in keep:
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def make_callback(run: Run) -> CheckpointCallback | None:
    """The feature hook of framework.train: `checkpoint: null` in the config switches checkpoints off."""
    if "checkpoint" in run.cfg and run.cfg.checkpoint is None:
        return None
    cb = CheckpointCallback(CheckpointSettings.from_cfg(run.cfg.get("checkpoint") or {}))
    if cb.settings.every_steps:
        run.step_callbacks.append(cb)
    return cb
