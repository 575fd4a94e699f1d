"""The built-in monitor diagnostics (notes section 3), registered in DIAGNOSTICS with the decorator a plugin uses:
divergence, update_ratio, block_norms, fit, histograms, units, first_layer.

Their options are the flat keys of the `diagnostics:` section (framework.monitoring.diagnostics.Thresholds); the
ones drawn every `tensorboard.histogram_every` epochs (histograms, unit fractions, the first-layer image) follow
that option. They read the run and never change it.
"""
from __future__ import annotations

import numpy as np

from framework.core.registry import EmptyConfig
from framework.kernels import dense as K
from framework.monitoring.diagnostics import (FitLimits, RatioBand, UnitLimits, divergence_finding, fit_findings,
                                              unit_findings, unit_fractions, update_ratio_findings)
from framework.monitoring.plugin import DIAGNOSTICS, Diagnostic, Moment

MAX_TILES = 256  # first_layer shows at most this many hidden units


def weight_blocks(layout) -> list[int]:
    """Indices of the weight blocks (decayed, or matrices): the update-ratio rule and gradient histograms use
    these, not biases."""
    return [i for i, b in enumerate(layout) if b.decay or len(b.shape) >= 2]


def is_layered(model) -> bool:
    """A model=sequential model: per-layer activation kinds and first-convolution filters."""
    from framework.layers.sequential import Sequential

    return isinstance(model, Sequential)


class HistogramEpochs(Diagnostic):
    """A diagnostic drawn every `tensorboard.histogram_every` epochs (and at the last)."""

    flat_options = True

    def every(self, moment: Moment) -> int:
        return moment.options.histogram_every


@DIAGNOSTICS.register("divergence", config=EmptyConfig)
class Divergence(Diagnostic):
    """Advice when the loss exploded (NaN/inf) and the run stopped as diverged: the lr is far too high (notes 3.1)."""

    order, flat_options = 10, True

    def advise(self, moment, earlier):
        run = moment.run
        return [divergence_finding(run.epoch + 1, run.lr)] if run.status == "diverged" else []


@DIAGNOSTICS.register("update_ratio", config=RatioBand)
class UpdateRatio(Diagnostic):
    """||update|| / ||weights|| per block at monitor steps: epoch means as update_ratio/<block>; a weight block's
    median outside [ratio_low, ratio_high] blames the learning rate (notes 3.3)."""

    tags = ("update_ratio/<block>",)
    order, flat_options = 20, True

    def __init__(self, options: RatioBand):
        super().__init__(options)
        self.sum, self.count = None, 0
        self.samples: list[tuple[int, np.ndarray]] = []  # (epochs completed, ratios of the weight blocks)
        self.weights: list[int] | None = None  # weight_blocks of the run's layout, found at the first sample

    def on_monitor(self, run) -> None:
        if self.weights is None:
            self.weights, self.sum = weight_blocks(run.layout), np.zeros(len(run.layout))
        p = run.param_norms
        ratio = run.update_norms / np.where(p > 0, p, np.inf)
        self.sum += ratio
        self.count += 1
        self.samples.append((run.epoch, ratio[self.weights]))

    def measure(self, moment):
        if not self.count:  # no monitor step this epoch (monitor.every = 0, full-batch optimizers)
            return {}
        return {f"update_ratio/{b.name}": r / self.count for b, r in zip(moment.run.layout, self.sum)}

    def end_epoch(self, run) -> None:
        if self.sum is not None:
            self.sum[:] = 0.0
        self.count = 0

    def median_ratios(self, layout, include_first_epoch: bool = False) -> dict[str, float]:
        """Median update/weight ratio of each weight block over the monitor samples after the first epoch (the
        first steps are a transient: Adam's first update is lr per weight whatever the gradient); with
        include_first_epoch, over all samples. Empty without samples."""
        samples = [r for epoch, r in self.samples if epoch >= 1 or include_first_epoch]
        if not samples:
            return {}
        medians = np.median(np.stack(samples), axis=0)
        blocks = list(layout)
        return {blocks[i].name: float(m) for i, m in zip(weight_blocks(layout), medians)}

    def advise(self, moment, earlier):
        run = moment.run
        # a diverged run may not reach epoch 2: its early samples still show how far too high the lr is
        early_end = run.status in ("diverged", "stopped_hopeless")
        return update_ratio_findings(self.median_ratios(run.layout, include_first_epoch=early_end), self.options)


@DIAGNOSTICS.register("block_norms", config=EmptyConfig)
class BlockNorms(Diagnostic):
    """||gradient|| and ||weights|| per block: epoch means of the monitor steps as grad_norm/<block> and
    param_norm/<block> (the norms at the epoch end when the epoch had no monitor step)."""

    tags = ("grad_norm/<block>", "param_norm/<block>")
    order, flat_options = 30, True

    def __init__(self, options):
        super().__init__(options)
        self.grad_sum = self.param_sum = None
        self.count = 0

    def on_monitor(self, run) -> None:
        if self.grad_sum is None:
            self.grad_sum, self.param_sum = np.zeros(len(run.layout)), np.zeros(len(run.layout))
        self.grad_sum += run.grad_norms
        self.param_sum += run.param_norms
        self.count += 1

    def measure(self, moment):
        run = moment.run
        names = [b.name for b in run.layout]
        if self.count:
            return {**{f"grad_norm/{n}": g / self.count for n, g in zip(names, self.grad_sum)},
                    **{f"param_norm/{n}": p / self.count for n, p in zip(names, self.param_sum)}}
        values, norms = {}, np.zeros(len(names))
        for prefix, vec in (("param_norm", run.theta), ("grad_norm", run.grad)):
            K.block_norms(vec, run.bounds, norms)
            values.update({f"{prefix}/{n}": v for n, v in zip(names, norms)})
        return values

    def end_epoch(self, run) -> None:
        if self.grad_sum is not None:
            self.grad_sum[:] = self.param_sum[:] = 0.0
        self.count = 0


@DIAGNOSTICS.register("fit", config=FitLimits)
class Fit(Diagnostic):
    """Final train vs val accuracy: overfitting, or too little capacity (notes 3.2; judged after 5 epochs)."""

    order, flat_options = 40, True

    def advise(self, moment, earlier):
        run = moment.run
        if run.status == "diverged" or run.epoch == 0:  # NaN weights prove nothing else
            return []
        lr_suspect = any(f.check in ("lr_too_low", "lr_too_high") for f in earlier)
        return fit_findings(run.last("train/acc"), run.last("val/acc"), self.options, lr_suspect, run.epoch)


@DIAGNOSTICS.register("histograms", config=EmptyConfig)
class Histograms(HistogramEpochs):
    """Histograms of the hidden activations on the sample rows, of every parameter block and of the weight blocks'
    gradients."""

    tags = ("activations/<layer>", "weights/<block>", "gradients/<block>")
    order = 50

    def measure(self, moment):
        run = moment.run
        for layer, a in moment.activations().items():
            moment.histogram(f"activations/{layer}", a)
        weights = set(weight_blocks(run.layout))
        for i, block in enumerate(run.layout):
            moment.histogram(f"weights/{block.name}", run.theta[block.offset:block.stop])
            if i in weights:
                moment.histogram(f"gradients/{block.name}", run.grad[block.offset:block.stop])
        return {}


@DIAGNOSTICS.register("units", config=UnitLimits)
class Units(HistogramEpochs):
    """Fractions of dead ReLUs / saturated tanh units per layer on the sample rows (a conv layer's units are its
    channels); above dead_fraction: bad init or lr (notes 3.4)."""

    tags = ("dead_relu/<layer>", "saturated_tanh/<layer>")
    order = 60

    def __init__(self, options: UnitLimits):
        super().__init__(options)
        self.latest: tuple[int, dict, dict] | None = None  # (epoch, dead, saturated) of the last measurement

    def fractions(self, moment: Moment) -> tuple[dict, dict]:
        model = moment.run.model
        kind, channels = model.activation_kind, None
        if is_layered(model):  # per-layer kinds; a conv layer's units are its channels
            units = model.activation_units()
            kind, channels = {k: v[0] for k, v in units.items()}, {k: v[1] for k, v in units.items()}
        dead, saturated = unit_fractions(moment.activations(), kind, self.options.saturation, channels)
        self.latest = (moment.epoch, dead, saturated)
        return dead, saturated

    def measure(self, moment):
        dead, saturated = self.fractions(moment)
        return {**{f"dead_relu/{layer}": f for layer, f in dead.items()},
                **{f"saturated_tanh/{layer}": f for layer, f in saturated.items()}}

    def advise(self, moment, earlier):
        run = moment.run
        if run.status == "diverged" or run.epoch == 0:
            return []
        if self.latest is None or self.latest[0] != run.epoch:
            self.fractions(moment)
        _, dead, saturated = self.latest
        return unit_findings(dead, saturated, self.options, len(moment.sample))


@DIAGNOSTICS.register("first_layer", config=EmptyConfig)
class FirstLayer(HistogramEpochs):
    """The first layer's weights as images: first_layer (a tile per hidden unit, when the data have an image
    shape) or, for a ConvNet, its first convolution's filters (filters/conv1)."""

    tags = ("first_layer", "filters/conv1")
    order = 70

    def measure(self, moment):
        from framework.monitoring.tensorboard import tile_images

        run = moment.run
        filters = run.model.first_filters(run.theta) if is_layered(run.model) else None
        if filters is not None:  # a ConvNet: its first convolution's filters, one tile each
            tag, columns, tile = filters
            moment.image(tag, tile_images(columns, tile, MAX_TILES))
            return {}
        shape = run.data.tile_shape  # (H, W) or (H, W, 3); None for signals and flat rows
        if not shape or "W1" not in run.layout.names or int(np.prod(shape)) != run.layout["W1"].shape[0]:
            return {}
        # 1 pixel per weight: the Time Series dashboard enlarges images without blurring, and every byte costs
        # (tensorboard checksums event records in pure Python)
        moment.image("first_layer", tile_images(run.layout.view(run.theta, "W1"), tuple(shape), MAX_TILES))
        return {}
