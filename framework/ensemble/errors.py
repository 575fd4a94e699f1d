"""The ensemble package's errors: EnsembleError (members that cannot form an ensemble, a bad ensemble file) and
NotApplicable (sources that do not fit one strategy; strategy=all skips it)."""
from __future__ import annotations

from framework.core.errors import FrameworkError


class EnsembleError(FrameworkError):
    """Members cannot form the requested ensemble, or an ensemble file is missing, damaged or not ours."""


class NotApplicable(EnsembleError):
    """The sources do not fit a strategy; strategy=all lists it as skipped with this message."""
