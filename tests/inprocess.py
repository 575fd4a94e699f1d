"""Run a command-line entry point the way `python -m <module>` would, in a forked copy of the test process: the
imports (Hydra, Numba, the plugins) are paid once, yet every case gets a fresh process (Hydra's global state,
logging, sys.exit) with its own working folder. Used by the bad-input corpus to keep its hundreds of cases fast."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback


def _entry(module: str):
    """The callable that `python -m module` runs (reads sys.argv, may raise SystemExit)."""
    if module == "framework":
        import framework.__main__ as app
        from framework.cli.app import main_entry

        return lambda: main_entry(app.main)
    if module == "framework.ensemble":
        from framework.cli import ensemble

        return ensemble.main
    if module == "framework.evaluate":
        from framework.cli import evaluate

        return lambda: sys.exit(evaluate.main())
    raise ValueError(f"no in-process entry for {module}")


def warm_up() -> None:
    """Import what the entry points import, once, before the first fork."""
    import h5py  # noqa: F401
    import sklearn.datasets  # noqa: F401

    import framework.io.callback  # noqa: F401
    import framework.io.checkpoint  # noqa: F401
    import framework.ensemble.job  # noqa: F401
    import framework.monitoring.monitor  # noqa: F401
    import framework.checks.preflight  # noqa: F401
    from framework.cli.app import register_configs

    register_configs()
    for module in ("framework", "framework.ensemble", "framework.evaluate"):
        _entry(module)


def run_forked(*args: str, module: str = "framework", cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m module args...` in a fork of this process; returns a CompletedProcess with text output."""
    entry = _entry(module)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        code = 1
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            if cwd is not None:
                os.chdir(cwd)
            sys.argv = [module, *args]
            try:
                entry()
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"python -m {module} {' '.join(args)} took longer than {timeout} s")
        time.sleep(0.01)
    code = os.waitstatus_to_exitcode(status)
    texts = []
    for f in (out, err):
        f.seek(0)
        texts.append(f.read().decode(errors="replace"))
        f.close()
    return subprocess.CompletedProcess([module, *args], code, texts[0], texts[1])
