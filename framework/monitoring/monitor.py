"""Babysitting a run (notes section 3): TensorBoard logging and diagnostics with advice, as one callback.

`make_callback(run)` returns a `Monitor` that writes TensorBoard events into the run directory when
`tensorboard.enabled`, and a diagnostics-only Monitor (no event files, no histograms) when only
`diagnostics.enabled`; None when both are off. What it logs (tags):
- per iteration (step = global iteration, written at epoch ends from run.epoch_losses): train/loss_iter
- per epoch (step = epoch): train/loss, train/acc, val/loss, val/acc, lr, momentum, val/ema_acc (EMA on),
  update_ratio/<block>, grad_norm/<block>, param_norm/<block> (means of the epoch's monitor samples)
- every `tensorboard.histogram_every` epochs and at the last one: histograms activations/<layer>,
  gradients/<W block>, weights/<block>; scalars dead_relu/<layer> or saturated_tanh/<layer> (per layer's own
  activation in a layered model; a conv layer's units are its channels); image first_layer, or filters/conv1 (the
  first convolution's filters) for a ConvNet
- text: config (at the start), preflight (if preflight.json exists), diagnostics (at the end); hparams with
  the metrics val/acc, best_val_acc, test_acc.
Per-step cost: none; at monitor steps a few tiny array operations; the rest happens at epoch ends.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf

from framework.kernels import dense as K
from framework.monitoring.diagnostics import (Thresholds, as_markdown, divergence_finding, fit_findings, unit_findings, unit_fractions,
                          update_ratio_findings)
from framework.core.params import param, section
from framework.engine.callbacks import Callback
from framework.layers.sequential import Sequential

log = logging.getLogger("framework")
HPARAM_METRICS = ("val/acc", "best_val_acc", "test_acc")
MAX_TILES = 256  # first_layer shows at most this many hidden units


@dataclass(frozen=True)
class Options:
    """The `tensorboard:` section of conf/config.yaml."""

    enabled: bool = param(True, "write TensorBoard event files")
    histogram_every: int = param(5, "epochs between histograms, dead-unit fractions and the first-layer image",
                                 range="[0, inf)")
    sample_rows: int = param(500, "fixed validation rows for activation histograms and dead/saturated fractions",
                             range="[1, inf)")
    histogram_bins: int = param(30, "bins of each histogram", range="[1, inf)")

    @classmethod
    def from_cfg(cls, node) -> "Options":
        return section(cls, node, "tensorboard")


def _hydra_job():
    """Hydra's job node (num, override_dirname, ...) when this run is a job of a multirun (a sweep), else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return HydraConfig.get()
    except Exception:  # no Hydra, or a config without its node
        pass
    return None


def _job_prefix() -> str:
    """`job <num>: ` inside a sweep, so interleaved console lines of parallel trials say whose they are."""
    hc = _hydra_job()
    return f"job {hc.job.num}: " if hc is not None else ""


def _job_overrides() -> list[str]:
    """The command-line overrides of this run (a sweep job's hold the values it was given)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:
        pass
    return []


def make_callback(run) -> "Monitor | None":
    """The run's monitoring callback, or None when TensorBoard and diagnostics are both switched off."""
    options = Options.from_cfg(run.cfg.get("tensorboard"))
    thresholds = Thresholds.from_cfg(run.cfg.get("diagnostics"))
    if not options.enabled and not thresholds.enabled:
        return None
    return Monitor(run, options, thresholds)


class Monitor(Callback):
    """Collects norms at monitor steps, logs to TensorBoard at epoch ends, and judges the run at its end."""

    def __init__(self, run, options: Options, thresholds: Thresholds):
        self.options, self.thresholds = options, thresholds
        self.writer = None
        blocks = list(run.layout)
        self.block_names = [b.name for b in blocks]
        # the weight blocks (decayed, or matrices): the update-ratio rule and gradient histograms use these
        self.weight_index = [i for i, b in enumerate(blocks) if b.decay or len(b.shape) >= 2]
        B = len(blocks)
        self._ratio_sum, self._grad_sum, self._param_sum = np.zeros(B), np.zeros(B), np.zeros(B)
        self._count = 0
        self._samples: list[tuple[int, np.ndarray]] = []  # (epochs completed, ratios of the weight blocks)
        self._units = None  # (epoch, dead, saturated) from the last activation pass
        self._preflight_logged = False
        self._start_time = time.time()
        d = run.data
        X = d.X_val if len(d.y_val) else d.X_train
        self.sample = X[:options.sample_rows]

    # --- hooks ---
    def on_train_start(self, run) -> None:
        self._start_time = time.time()
        if not self.options.enabled:
            return
        from framework.monitoring.tensorboard import EventWriter

        self.writer = EventWriter(run.run_dir)
        try:
            text = run.config_yaml()
        except Exception:  # an interpolation only Hydra can resolve: show the config as written
            text = OmegaConf.to_yaml(run.cfg)
        self.writer.text("config", f"```yaml\n{text}```", run.epoch)
        self._log_preflight(run)

    def on_monitor(self, run) -> None:
        p = run.param_norms
        ratio = run.update_norms / np.where(p > 0, p, np.inf)
        self._ratio_sum += ratio
        self._grad_sum += run.grad_norms
        self._param_sum += p
        self._count += 1
        self._samples.append((run.epoch, ratio[self.weight_index]))

    def on_epoch_end(self, run) -> None:
        try:
            if self.writer is not None:
                self._log_epoch(run)
        finally:
            self._ratio_sum[:] = self._grad_sum[:] = self._param_sum[:] = 0.0
            self._count = 0

    def on_train_end(self, run) -> None:
        try:
            findings = self.diagnose(run) if self.thresholds.enabled else None
            prefix = _job_prefix()
            for f in findings or []:
                log.warning("%sdiagnostics: %s", prefix, f.message)
            if findings is not None:
                run.summary["diagnostics"] = [f.as_dict() for f in findings]
            if self.writer is not None:
                w, step = self.writer, run.epoch
                self._log_preflight(run)
                if findings is not None:
                    w.text("diagnostics", as_markdown(findings), step)
                metrics = run.summary.get("metrics", {})
                w.scalars({k: metrics[k] for k in ("best_val_acc", "test_acc") if metrics.get(k) is not None}, step)
                from framework.monitoring.tensorboard import select_hparams

                w.hparams(select_hparams(run.summary.get("hparams", {}), _job_overrides()), list(HPARAM_METRICS),
                          self._start_time)
                w.session_end(run.status == "ok", step)
        finally:
            if self.writer is not None:
                self.writer.close()

    # --- TensorBoard ---
    def _log_preflight(self, run) -> None:
        path = run.run_dir / "preflight.json"
        if self._preflight_logged or not path.is_file():
            return
        try:
            report = json.dumps(json.loads(path.read_text()), indent=2)
        except (OSError, ValueError) as exc:
            log.warning("could not read %s for TensorBoard: %s", path.name, exc)
            return
        self.writer.text("preflight", f"```json\n{report}\n```", run.epoch)
        self._preflight_logged = True

    def _log_epoch(self, run) -> None:
        w, epoch = self.writer, run.epoch
        losses = run.epoch_losses
        if run.optimizer.full_batch:  # one step per epoch, several inner iterations
            first = (epoch - 1) * len(losses) + 1
        else:
            first = run.step - run.steps_per_epoch + 1
        w.scalar_series("train/loss_iter", losses, first)
        values = {k: run.last(k) for k in ("train/loss", "train/acc", "val/loss", "val/acc", "lr")}
        if run.momentum is not None:
            values["momentum"] = run.last("momentum")
        if "val/ema_acc" in run.history:
            values["val/ema_acc"] = run.last("val/ema_acc")
        if self._count:
            for name, r, g, p in zip(self.block_names, self._ratio_sum, self._grad_sum, self._param_sum):
                values[f"update_ratio/{name}"] = r / self._count
                values[f"grad_norm/{name}"] = g / self._count
                values[f"param_norm/{name}"] = p / self._count
        else:  # no monitor step this epoch (monitor.every = 0, full-batch optimizers): norms of the epoch end
            norms = np.zeros(len(self.block_names))
            for prefix, vec in (("param_norm", run.theta), ("grad_norm", run.grad)):
                K.block_norms(vec, run.bounds, norms)
                values.update({f"{prefix}/{name}": v for name, v in zip(self.block_names, norms)})
        k = self.options.histogram_every
        if (k and epoch % k == 0) or epoch >= run.settings.epochs:
            values.update(self._log_histograms(run))
        w.scalars(values, epoch)
        w.flush()  # each epoch reaches the disk, for a TensorBoard that is watching

    def _log_histograms(self, run) -> dict:
        """Histograms and the first-layer image at this epoch; returns the dead/saturated scalars."""
        w, epoch, bins = self.writer, run.epoch, self.options.histogram_bins
        acts = self._unit_stats(run)
        for layer, a in acts.items():
            w.histogram(f"activations/{layer}", a, epoch, bins)
        for i, block in enumerate(run.layout):
            w.histogram(f"weights/{block.name}", run.theta[block.offset:block.stop], epoch, bins)
            if i in self.weight_index:
                w.histogram(f"gradients/{block.name}", run.grad[block.offset:block.stop], epoch, bins)
        self._log_first_layer(run)
        _, dead, saturated = self._units
        out = {f"dead_relu/{layer}": f for layer, f in dead.items()}
        out.update({f"saturated_tanh/{layer}": f for layer, f in saturated.items()})
        return out

    def _unit_stats(self, run) -> dict:
        acts = run.model.activations(run.theta, self.sample) if len(self.sample) else {}
        kind, channels = run.model.activation_kind, None
        if isinstance(run.model, Sequential):  # per-layer kinds; a conv layer's units are its channels
            units = run.model.activation_units()
            kind, channels = {k: v[0] for k, v in units.items()}, {k: v[1] for k, v in units.items()}
        dead, saturated = unit_fractions(acts, kind, self.thresholds.saturation, channels)
        self._units = (run.epoch, dead, saturated)
        return acts

    def _log_first_layer(self, run) -> None:
        from framework.monitoring.tensorboard import tile_images

        filters = run.model.first_filters(run.theta) if isinstance(run.model, Sequential) else None
        if filters is not None:  # a ConvNet: its first convolution's filters, one tile each
            tag, columns, tile = filters
            self.writer.image(tag, tile_images(columns, tile, MAX_TILES), run.epoch)
            return
        shape = run.data.tile_shape  # (H, W) or (H, W, 3); None for signals and flat rows
        names = run.layout.names
        if not shape or "W1" not in names or int(np.prod(shape)) != run.layout["W1"].shape[0]:
            return
        # 1 pixel per weight: the Time Series dashboard enlarges images without blurring, and every byte costs
        # (tensorboard checksums event records in pure Python)
        self.writer.image("first_layer", tile_images(run.layout.view(run.theta, "W1"), tuple(shape), MAX_TILES),
                          run.epoch)

    # --- diagnostics ---
    def median_ratios(self, include_first_epoch: bool = False) -> dict[str, float]:
        """Median update/weight ratio of each weight block over the monitor samples after the first epoch (the
        first steps are a transient: Adam's first update is lr per weight whatever the gradient); with
        include_first_epoch, over all samples. Empty without samples."""
        samples = [r for epoch, r in self._samples if epoch >= 1 or include_first_epoch]
        if not samples:
            return {}
        medians = np.median(np.stack(samples), axis=0)
        return {self.block_names[i]: float(m) for i, m in zip(self.weight_index, medians)}

    def diagnose(self, run) -> list:
        """The findings of this run, judged with self.thresholds."""
        th = self.thresholds
        diverged = run.status == "diverged"
        # a diverged run may not reach epoch 2: its early samples still show how far too high the lr is
        early_end = diverged or run.status == "stopped_hopeless"
        findings = update_ratio_findings(self.median_ratios(include_first_epoch=early_end), th)
        if diverged:
            return [divergence_finding(run.epoch + 1, run.lr)] + findings
        if run.epoch == 0:
            return findings
        lr_suspect = any(f.check in ("lr_too_low", "lr_too_high") for f in findings)
        findings += fit_findings(run.last("train/acc"), run.last("val/acc"), th, lr_suspect, run.epoch)
        if self._units is None or self._units[0] != run.epoch:
            self._unit_stats(run)
        _, dead, saturated = self._units
        findings += unit_findings(dead, saturated, th, len(self.sample))
        return findings
