"""Run lifecycle: run folders claimed atomically, stop requests by signal, and the errors that end a run early
(interrupted, hopeless) with their exit codes.

Exit codes of `python -m framework`: 0 ok, 2 a user mistake, 3 diverged (NaN/inf loss), 4 a failed check,
5 stopped as hopeless, 128 + signal number when interrupted (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import signal
import sys
import threading
import time

from framework.core.errors import FrameworkError

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
PAUSE_ENV = "FRAMEWORK_TEST_PAUSE"  # test hook: "<point>=<seconds>" sleeps there (pause_for_tests)
MAX_SUFFIX = 120  # characters of the override suffix kept in a run folder's name


# ----------------------------------------------------------------------------------------------------------------
# run folders
# ----------------------------------------------------------------------------------------------------------------
def override_suffix(override_dirname: str) -> str:
    """`_<overrides>` for a run folder's name ('' without overrides). Characters a path or Hydra's grammar
    dislikes become '-'; a suffix longer than MAX_SUFFIX keeps its start and ends with 8 hex digits of a hash of
    the full override string, so two runs that differ only beyond the cut still get different names."""
    if not override_dirname:
        return ""
    clean = re.sub(r"[^A-Za-z0-9_.,=+-]", "-", override_dirname)
    if len(clean) > MAX_SUFFIX:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
        clean = f"{clean[:MAX_SUFFIX - 9]}-{digest}"
    return "_" + clean


def claim_dir(stem, suffix: str = "") -> str:
    """Create `<stem><suffix>` exclusively and return its path; when it exists (another launch in the same
    second), `<stem>-1<suffix>`, `<stem>-2<suffix>`, ... `os.mkdir` without exist_ok is atomic, so concurrent
    processes never share a folder."""
    stem = str(stem)
    pathlib.Path(stem).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        path = f"{stem}{f'-{n}' if n else ''}{suffix}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1


# ----------------------------------------------------------------------------------------------------------------
# ends of a run other than ok / diverged
# ----------------------------------------------------------------------------------------------------------------
class StoppedHopeless(FrameworkError):
    """The loss stayed far above the first loss: the run stops with status 'stopped_hopeless'."""

    exit_code = 5


class Interrupted(BaseException):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) ended the run or its start-up. A BaseException, like
    KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message or f"{signal_name(signum)} during start-up, before training: nothing was trained "
                                    "or written; run the command again.")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ----------------------------------------------------------------------------------------------------------------
# stop requests
# ----------------------------------------------------------------------------------------------------------------
class StopRequests:
    """Process-wide record of stop signals.

    Two modes. At start-up (`raising`) a signal raises Interrupted at once: nothing has been written yet.
    While training (`deferred`, inside `training()`) the first signal only sets `received`; the loop checks it
    between steps and stops at that safe point. A second signal then raises Interrupted, except inside a
    `critical()` section (a checkpoint or summary write), where it waits for the section to end: no signal
    ever leaves a half-written file."""

    def __init__(self):
        self.received = 0  # the first stop signal's number, 0 = none
        self.deferred = False
        self.depth = 0  # nesting of critical() sections
        self.pending = 0  # a hard stop that arrived inside a critical section
        self.installed = False
        self.trained = False  # a training() section has ended in this process

    def install(self) -> bool:
        """Handle SIGINT/SIGTERM/SIGHUP for the rest of this process (the CLI's main thread; False elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        self.installed = True
        return True

    def _handle(self, signum, frame) -> None:
        first = not self.received
        if first:
            self.received = signum
        if self.deferred and first:
            return
        if self.depth:
            self.pending = self.pending or signum
            return
        if self.trained:
            raise Interrupted(signum, f"{signal_name(signum)} after training ended: the run's files are complete.")
        raise Interrupted(signum)

    @contextlib.contextmanager
    def training(self):
        """Signals stop the loop at its next safe point instead of raising (see the class docstring). Outside
        the CLI (framework.train from a notebook, a sweep's worker process) the handlers are installed for the
        duration only, and an earlier stop request is forgotten."""
        main = threading.current_thread() is threading.main_thread()
        saved = None
        if main and not self.installed:
            saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)
            self.reset()
        previous, self.deferred = self.deferred, True
        try:
            yield
        finally:
            self.deferred = previous
            self.trained = True
            if saved is not None:
                for signum, handler in saved.items():
                    signal.signal(signum, handler)

    @contextlib.contextmanager
    def critical(self):
        """A section no signal interrupts (file writes); a hard stop asked for inside it is raised after it."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending:
                signum, self.pending = self.pending, 0
                raise Interrupted(signum)

    def reset(self) -> None:
        self.received = self.pending = 0


STOP = StopRequests()


def exit_early_on_signals() -> None:
    """For `python -m framework` while Python still imports the package (seconds on a busy machine), before
    framework.__main__ can install STOP: a stop signal prints the start-up line and exits 128 + signal at once.
    Nothing has been written yet, so leaving without unwinding loses nothing."""
    def leave(signum, frame):
        os.write(2, f"interrupted: {Interrupted(signum)}\n".encode())
        os._exit(128 + signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, leave)


@contextlib.contextmanager
def exit_on_interrupt():
    """Turn an Interrupted raised inside into its one-line message on stderr and exit code 128 + signal."""
    try:
        yield
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)


PAUSE = os.environ.get(PAUSE_ENV, "")  # read once: the loop tests this string, never the environment


def pause_for_tests(point: str) -> None:
    """Sleep at `point` when FRAMEWORK_TEST_PAUSE names it ("startup=2" or "step=0.05"), announcing it on stderr
    so a test knows when to send its signal."""
    name, _, seconds = PAUSE.partition("=")
    if PAUSE and name == point:
        if point not in _announced:
            _announced.add(point)
            print(f"[test pause: {point}]", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 1))


_announced: set[str] = set()
