"""Console output of a sweep job: trial_logging, under which job 0 prints the full pre-flight report and every
other job one line with its verdict (each job keeps the full report in its preflight.json)."""
from __future__ import annotations

import contextlib
import logging


class _TrialPreflightFilter(logging.Filter):
    """Turns the pre-flight report (one multi-line record) of a sweep job into its one-line verdict with the
    job number; the whole report stays in the job's preflight.json."""

    def __init__(self, num):
        super().__init__()
        self.num = num
        from framework.checks.preflight import PreflightReport

        self.report_type = PreflightReport

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 1 and isinstance(args[0], self.report_type):
            verdict = str(args[0]).splitlines()[0] if str(args[0]) else "pre-flight done"
            record.msg, record.args = "job %s: %s (report: preflight.json)", (self.num, verdict)
        return True


@contextlib.contextmanager
def trial_logging(num):
    """Inside sweep job `num`: job 0 prints the full pre-flight report once; every other job one line with its
    verdict (a failing check still stops the job with the full message)."""
    if num is None or str(num) == "0":
        yield
        return
    logger = logging.getLogger("framework")
    quiet = _TrialPreflightFilter(num)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
