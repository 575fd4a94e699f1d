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


class CheckpointError(FrameworkError):
    """A checkpoint file is missing, damaged, not ours, from a newer version, or does not fit the config."""


class DivergedError(FrameworkError):
    """The loss became NaN or infinite; the run stops with status 'diverged'."""

    exit_code = 3


class CheckFailed(FrameworkError):
    """A pre-flight check failed in strict mode; training did not start."""

    exit_code = 4


# errno values of a write that failed for a reason the user can fix (permissions, read-only or full disk, quota)
USER_ERRNOS = {1: "permission denied", 13: "permission denied", 28: "no space left on the device",
               30: "read-only file system", 122: "disk quota exceeded"}


def os_error_message(exc: OSError) -> str | None:
    """One paragraph for an OSError a user can fix (see USER_ERRNOS), naming the file; None for other errors.
    h5py reports such failures as a plain OSError whose text holds `name = '...'` and `errno = N`."""
    import re

    text = str(exc)
    code = exc.errno
    if code is None:
        match = re.search(r"errno = (\d+)", text)
        code = int(match.group(1)) if match else None
    if code not in USER_ERRNOS and "No space left" not in text:
        return None
    name = exc.filename
    if name is None:
        match = re.search(r"name = '([^']+)'", text)
        name = match.group(1) if match else None
    temp = re.match(r"^(.*/)?\.(.+)\.\d+\.tmp$", str(name or ""))
    if temp:  # name the file being written, not its temporary twin (which the writer removed)
        name = f"{temp.group(1) or ''}{temp.group(2)}"
    reason = USER_ERRNOS.get(code, "no space left on the device")
    where = f"{name}" if name else "a file of the run"
    return (f"Cannot write {where}: {reason}. The run stopped; files written before stay intact (every write goes "
            "to a temporary file that is renamed only when complete). Free space or fix the folder's permissions, "
            "then continue with resume=<run folder> or start again.")
