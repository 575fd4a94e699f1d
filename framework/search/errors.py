"""The error of the search package: SearchError, raised when a search cannot start or a sweep folder cannot be read.
It is a user error (a FrameworkError): the command prints its one paragraph and exits with its code."""
from __future__ import annotations

from framework.core.errors import FrameworkError


class SearchError(FrameworkError):
    """A search cannot start or a sweep folder cannot be read (bad option, nothing to search, missing files)."""
