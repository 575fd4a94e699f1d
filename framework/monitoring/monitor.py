"""Babysitting a run (notes section 3): TensorBoard logging and diagnostics with advice, as one callback.

`make_callback(run)` returns a `Monitor` that writes TensorBoard events into the run directory when
`tensorboard.enabled`, and a diagnostics-only Monitor (no event files, no histograms) when only
`diagnostics.enabled`; None when both are off. The Monitor writes the run's own metrics and hands every other
measurement to the registered diagnostics (framework.monitoring.plugin: the built-ins of
framework.monitoring.builtin and any plugin's), in their order. What it logs (tags):
- per iteration (step = global iteration, written at epoch ends from run.epoch_losses): train/loss_iter
- per epoch (step = epoch): train/loss, train/acc, val/loss, val/acc, lr, momentum, val/ema_acc (EMA on), then
  the diagnostics' tags: update_ratio/<block>, grad_norm/<block>, param_norm/<block> (means of the epoch's monitor
  samples)
- every `tensorboard.histogram_every` epochs and at the last one: histograms activations/<layer>,
  gradients/<W block>, weights/<block>; scalars dead_relu/<layer> or saturated_tanh/<layer> (per layer's own
  activation in a layered model; a conv layer's units are its channels); image first_layer, or filters/conv1 (the
  first convolution's filters) for a ConvNet; a plugin diagnostic's tags every `diagnostics.<name>.every` epochs
- text: config (at the start), preflight (if preflight.json exists), diagnostics (at the end: every diagnostic's
  advice); hparams with the metrics val/acc, best_val_acc, test_acc.
Per-step cost: none; at monitor steps a few tiny array operations; the rest happens at epoch ends.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from omegaconf import OmegaConf

from framework.core.params import param, section
from framework.engine.callbacks import Callback
from framework.monitoring.diagnostics import Thresholds, as_markdown, configure
from framework.monitoring.plugin import DIAGNOSTICS, Diagnostic, Moment

log = logging.getLogger("framework")
HPARAM_METRICS = ("val/acc", "best_val_acc", "test_acc")


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
    thresholds, diagnostic_options = configure(run.cfg.get("diagnostics"))
    if not options.enabled and not thresholds.enabled:
        return None
    return Monitor(run, options, thresholds, diagnostic_options)


def build_diagnostics(diagnostic_options: dict) -> list[Diagnostic]:
    """The enabled diagnostics, built from their validated options, in their order (then by name)."""
    built = []
    for name, opts in sorted(diagnostic_options.items()):
        if getattr(opts, "enabled", True):
            built.append(DIAGNOSTICS.get(name).factory(opts))
    return sorted(built, key=lambda d: d.order)


class Monitor(Callback):
    """Writes the run's metrics and its diagnostics' measurements to TensorBoard at epoch ends, feeds the
    diagnostics at monitor steps, and collects their advice at the end of the run."""

    def __init__(self, run, options: Options, thresholds: Thresholds, diagnostic_options: dict | None = None):
        self.options, self.thresholds = options, thresholds
        if diagnostic_options is None:
            diagnostic_options = configure(run.cfg.get("diagnostics"))[1]
        self.diagnostics = build_diagnostics(diagnostic_options)
        # the training path calls on_monitor: only the diagnostics that measure there
        self._at_monitor_steps = [d for d in self.diagnostics if type(d).on_monitor is not Diagnostic.on_monitor]
        self.writer = None
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
        for d in self._at_monitor_steps:
            d.on_monitor(run)

    def on_epoch_end(self, run) -> None:
        try:
            if self.writer is not None:
                self._log_epoch(run)
        finally:
            for d in self.diagnostics:
                d.end_epoch(run)

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
        moment = Moment(run, w, self.options, self.sample)
        for d in self.diagnostics:
            k = d.every(moment)
            if (k and epoch % k == 0) or moment.last:
                values.update(d.measure(moment))
        w.scalars(values, epoch)
        w.flush()  # each epoch reaches the disk, for a TensorBoard that is watching

    # --- diagnostics ---
    def diagnose(self, run) -> list:
        """The findings of this run: each diagnostic's advice, in order (a later one sees the earlier ones')."""
        moment = Moment(run, self.writer, self.options, self.sample)
        findings = []
        for d in self.diagnostics:
            findings += d.advise(moment, list(findings))
        return findings
