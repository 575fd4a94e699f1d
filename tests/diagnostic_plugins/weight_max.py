"""A user-defined monitor diagnostic, written as a plugin file would be: the largest |weight| of each parameter
block as TensorBoard scalars weight_max/<block>, and advice when a weight grows past `limit`.

Registered with the public decorator; its options (enabled, every, limit) appear under diagnostics.weight_max with
no YAML. tests/test_diagnostic_registry.py copies this file into a run's plugins/ folder and trains it through
the CLI."""
from dataclasses import dataclass

import numpy as np

from framework import param
from framework.monitoring import DIAGNOSTICS, Diagnostic, DiagnosticOptions, Finding


@dataclass
class WeightMaxOptions(DiagnosticOptions):
    limit: float = param(10.0, "largest |weight| above which the run gets advice", range="(0, inf)")


@DIAGNOSTICS.register("weight_max", config=WeightMaxOptions)
class WeightMax(Diagnostic):
    """Largest |weight| of each parameter block (weight_max/<block>); advice above `limit`."""

    tags = ("weight_max/<block>",)

    def measure(self, moment):
        theta = moment.run.theta
        return {f"weight_max/{b.name}": float(np.abs(theta[b.offset:b.stop]).max()) for b in moment.run.layout}

    def advise(self, moment, earlier):
        largest = float(np.abs(moment.run.theta).max())
        if largest <= self.options.limit:
            return []
        return [Finding("weight_max", f"a weight reached {largest:.3g}, above diagnostics.weight_max.limit="
                                      f"{self.options.limit:g}", "3", "", largest)]
