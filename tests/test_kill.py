"""Randomized kills (issue 13): training runs (forked processes) SIGKILLed at random moments, many of them inside
checkpoint writes, each resumed with `resume=<run dir>` until it finishes; every published file must then equal, bit for bit, the
files of an uninterrupted run (checkpoint contents: parameters, optimizer state, EMA, RNG, history and
metadata; summary.json metrics), whatever point of the publication order the kills hit.

Two kinds of kill: the writer SIGKILLs itself at the N-th time a write reaches a stage (temp file created, half
the datasets written, temp file complete, before the rename, hard link made: hdf5.stage), or the test
SIGKILLs it at a random delay while every write stage sleeps a little (so the delay often lands inside a
write). test_resume.py covers the same through the CLI; forks keep 50+ kills affordable. Two configurations: a last.h5 commit after every epoch plus mid-epoch writes and top-2
pruning, and the defaults (last.h5 within the time budget, top-3), whose commit points depend on timing."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

import framework
from framework.io import checkpoint as C
from framework.io import callback as CB, hdf5 as H5

from conftest import compose_config
from test_checkpoint import assert_same_checkpoints

BASE = ["data=digits", "model=mlp", "model.hidden_sizes=[16]", "model.keep_prob=0.9", "epochs=6",
        "batch_size=32", "preflight=off", "++tensorboard.enabled=false", "checkpoint.every=1"]
CONFIGS = {  # 37 steps per epoch; EMA (default) and dropout on
    "every_epoch": [*BASE, "checkpoint.max_overhead=0", "checkpoint.every_steps=10", "checkpoint.keep_top_k=2"],
    "defaults": BASE,
}
STAGES = ("create", "arrays", "written", "publish", "link")
MIN_KILLS = 50
MAX_LAUNCHES = 12  # per chain; then the chain's run is finished without a kill
TIMEOUT = 120
FORK = multiprocessing.get_context("fork")  # a trial starts in milliseconds instead of seconds of imports


def _child(cfg, run_dir, hook):
    """A trial process (forked: the parent's imports and compiled kernels come for free): train or resume."""
    import logging

    import framework

    logging.disable(logging.CRITICAL)
    if hook:
        os.environ[H5.HOOK_ENV] = hook
    else:
        os.environ.pop(H5.HOOK_ENV, None)
    framework.train(cfg, run_dir=run_dir)


class Chain:
    """One run folder: started, killed, resumed, ... until a launch ends on its own."""

    def __init__(self, folder, cfg, config, rng):
        self.folder, self.cfg, self.config, self.rng = folder, cfg, config, rng
        self.launches = 0
        self.fresh_starts = 0  # launches after a kill that found no last.h5 yet
        self.kills = {"self": 0, "external": 0}
        self.done = False
        self.log: list[str] = []

    def step(self) -> None:
        """One launch of the chain: a fresh run, then resumes (`resume=<run dir>`), with a random kill."""
        # a kill before the first last.h5 leaves nothing to resume from: the run starts again
        fresh = not (self.folder / "checkpoints" / "last.h5").exists()
        self.fresh_starts += fresh and self.launches > 0
        cfg = self.cfg if fresh else OmegaConf.merge(self.cfg, {"resume": str(self.folder)})
        self.launches += 1
        mode = "none" if self.launches > MAX_LAUNCHES else str(self.rng.choice(["self", "external"]))
        hook = ""
        if mode == "self":
            hook = f"kill={self.rng.choice(STAGES)}@{int(self.rng.integers(1, 13))}"
        elif mode == "external":
            hook = "sleep=0.002"
        proc = FORK.Process(target=_child, args=(cfg, self.folder, hook))
        proc.start()
        if mode == "external":
            proc.join(float(self.rng.uniform(0.0, 0.6)))
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(TIMEOUT)
        code = proc.exitcode
        self.log.append(f"launch {self.launches} ({mode} {hook}{', fresh' if fresh else ''}): exit {code}")
        if code == -signal.SIGKILL:
            self.kills[mode] += 1
            for p in (self.folder / "checkpoints").glob("*.h5"):
                C.read_checkpoint(p)  # whatever was published is whole
        else:
            assert code == 0, "\n".join(self.log)
            self.done = True


@pytest.mark.slow
def test_randomized_kills_resume_to_bit_identical_files(tmp_path, capsys):
    t0 = time.monotonic()
    rng = np.random.default_rng(2026)
    cfgs = {name: compose_config(*overrides) for name, overrides in CONFIGS.items()}
    refs = {}
    for name, cfg in cfgs.items():  # in this process: also compiles/loads the kernels the forks inherit
        refs[name] = tmp_path / f"ref_{name}"
        framework.train(cfg, run_dir=refs[name])
    chains: list[Chain] = []
    total = lambda: sum(sum(c.kills.values()) for c in chains)  # noqa: E731
    while total() < MIN_KILLS:
        for name, cfg in cfgs.items():
            chain = Chain(tmp_path / f"chain{len(chains)}", cfg, name, np.random.default_rng(rng.integers(2 ** 32)))
            chains.append(chain)
            while not chain.done:
                chain.step()

    identical = 0
    for chain in chains:
        ref = refs[chain.config]
        try:
            assert_same_checkpoints(ref / "checkpoints", chain.folder / "checkpoints")
            got, want = (json.loads((d / "summary.json").read_text()) for d in (chain.folder, ref))
            assert got["metrics"] == want["metrics"] and got["status"] == want["status"] == "ok"
            assert (got["best_epoch"], got["steps"], got["epochs_completed"]) == \
                (want["best_epoch"], want["steps"], want["epochs_completed"])
            assert not [p for p in (chain.folder / "checkpoints").iterdir() if CB.TMP_FILE.match(p.name)]
        except AssertionError as exc:
            raise AssertionError(f"{chain.folder.name} ({chain.config}) differs after its kills:\n"
                                 + "\n".join(chain.log)) from exc
        identical += 1
    kills = {mode: sum(c.kills[mode] for c in chains) for mode in ("self", "external")}
    with capsys.disabled():
        print(f"\n[kills] {total()} kills ({kills['self']} inside writes by the hook, {kills['external']} at random "
              f"delays) in {len(chains)} runs of {sum(c.launches for c in chains)} launches "
              f"({sum(c.fresh_starts for c in chains)} restarts before a first last.h5); {identical} of "
              f"{len(chains)} runs resumed to bit-identical files; {time.monotonic() - t0:.0f} s")
