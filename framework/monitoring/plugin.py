"""What a monitor diagnostic is: the `DIAGNOSTICS` registry, the `Diagnostic` base class a diagnostic subclasses,
the options every plugin diagnostic has (`DiagnosticOptions`) and the `Moment` the diagnostics share.

A diagnostic is one class registered with `@DIAGNOSTICS.register("name", config=Options)`, in a plugin file or a
package's entry point (the built-ins are in framework.monitoring.builtin). Its options live under
`diagnostics.<name>` from its dataclass defaults (no YAML needed; `python -m framework diagnostics.<name>.every=2`
sets one); the run's Monitor calls it at monitor steps, at epoch ends and at the end of the run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from framework.core.params import param
from framework.core.registry import Registry

DIAGNOSTICS = Registry("diagnostic", "diagnostics")


@dataclass
class DiagnosticOptions:
    """The options every plugin diagnostic has; its own config subclasses this and adds its thresholds."""

    enabled: bool = param(True, "take this diagnostic's measurements and give its advice")
    every: int = param(1, "epochs between its TensorBoard measurements (the last epoch always gets one; 0 = only "
                          "the last)", range="[0, inf)")


class Moment:
    """What the diagnostics share at one moment of a run (an epoch end, or the end of the run): the run, the
    TensorBoard writer (None when only the advice is on), the `tensorboard:` options and the fixed sample rows
    (N, D) of the validation split, whose activations are computed on first use and shared (one forward pass)."""

    def __init__(self, run, writer, options, sample: np.ndarray):
        self.run, self.writer, self.options, self.sample = run, writer, options, sample
        self.epoch = run.epoch  # epochs completed: the step of everything written now
        self.last = run.epoch >= run.settings.epochs  # the run's final epoch always gets every measurement
        self._activations: dict | None = None

    def activations(self) -> dict[str, np.ndarray]:
        """{layer: (N, H) hidden activations of run.theta on the sample rows}; empty without rows. Reads only."""
        if self._activations is None:
            run = self.run
            self._activations = run.model.activations(run.theta, self.sample) if len(self.sample) else {}
        return self._activations

    def histogram(self, tag: str, values) -> None:
        """A histogram of `values` (any shape) under `tag` at this epoch, with `tensorboard.histogram_bins`."""
        if self.writer is not None:
            self.writer.histogram(tag, values, self.epoch, self.options.histogram_bins)

    def image(self, tag: str, pixels: np.ndarray) -> None:
        """An image (H, W) grey or (H, W, 3) colour, floats in [0, 1] or uint8, under `tag` at this epoch."""
        if self.writer is not None:
            self.writer.image(tag, pixels, self.epoch)


class Diagnostic:
    """A monitor diagnostic: what it measures from the run (never changing it: no RNG draws, no writes to theta),
    the TensorBoard tags it writes and the advice it gives at the end of the run. Every hook is optional.

    `tags`: the tags it writes, `<block>` / `<layer>` standing for names (documentation, and the tests check
    what a run writes against them). `order`: diagnostics measure and advise in increasing order (the built-ins
    use 10-70; a later one sees the earlier ones' findings). `flat_options`: the built-ins' options predate the
    registry and sit directly in `diagnostics:` (conf/config.yaml); every other diagnostic's sit in
    `diagnostics.<name>`."""

    tags: tuple[str, ...] = ()
    order: int = 100
    flat_options: bool = False

    def __init__(self, options):
        self.options = options  # the validated config dataclass registered with it

    def every(self, moment: Moment) -> int:
        """Epochs between its measurements (0: only the last epoch); default: its option `every` (else 1)."""
        return getattr(self.options, "every", 1)

    def on_monitor(self, run) -> None:
        """At a monitor step (every `monitor.every` optimizer steps), after the update: run.update_norms,
        run.param_norms and run.grad_norms (P blocks, float64) are fresh. Runs on the training path: keep it cheap."""

    def measure(self, moment: Moment) -> dict[str, float]:
        """At an epoch end when due (TensorBoard on): scalars {tag: value} to write at moment.epoch; histograms
        and images go through moment.histogram / moment.image."""
        return {}

    def end_epoch(self, run) -> None:
        """After every epoch end, due or not (e.g. reset what on_monitor summed over the epoch)."""

    def advise(self, moment: Moment, earlier: list) -> list:
        """At the end of the run (diagnostics on; see run.status): its findings, a list of
        framework.monitoring.diagnostics.Finding. `earlier`: the findings of the diagnostics before it."""
        return []


def options_node() -> dict:
    """{name: {option: default}} of the registered diagnostics whose options sit in `diagnostics.<name>`: the
    node the CLI adds to the `diagnostics:` section so they can be set on the command line without a YAML file."""
    node = {}
    for name in DIAGNOSTICS.names():
        entry = DIAGNOSTICS.get(name)
        if getattr(entry.factory, "flat_options", False):
            continue
        node[name] = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                      for f in dataclasses.fields(entry.config_cls)}
    return node
