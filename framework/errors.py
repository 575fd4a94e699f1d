"""User-facing errors: one readable paragraph, no traceback, non-zero exit (see framework.cli)."""


class FrameworkError(Exception):
    """A mistake the user can fix (bad config value, bad data file). Printed as one paragraph."""

    exit_code = 2


class ConfigError(FrameworkError):
    """A config key holds a value outside what is allowed."""

    def __init__(self, key: str, value, allowed: str, hint: str = ""):
        self.key, self.value, self.allowed = key, value, allowed
        text = f"Invalid value for '{key}': {value!r}. Allowed: {allowed}."
        if hint:
            text += f" {hint}"
        super().__init__(text)


class DataError(FrameworkError):
    """A dataset file or directory is missing, malformed or inconsistent."""


class DivergedError(FrameworkError):
    """The loss became NaN or infinite; the run stops with status 'diverged'."""

    exit_code = 3


class CheckFailed(FrameworkError):
    """A pre-flight check failed in strict mode; training did not start."""

    exit_code = 4
