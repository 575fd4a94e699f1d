"""Babysitting a run: the monitor callback, its diagnostics (a registry: `DIAGNOSTICS`, `Diagnostic`) and the
TensorBoard event writer."""
from framework.monitoring import builtin  # noqa: F401  (registers the built-in diagnostics)
from framework.monitoring.diagnostics import Finding
from framework.monitoring.plugin import DIAGNOSTICS, Diagnostic, DiagnosticOptions, Moment

__all__ = ["DIAGNOSTICS", "Diagnostic", "DiagnosticOptions", "Finding", "Moment"]
