"""Shared test helpers: compose the real config through Hydra, run the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from framework.cli.app import CONF_DIR, register_configs

# Quiet, quick runs: no pre-flight, TensorBoard or checkpoints unless a test asks for them.
FAST_BASE = ["preflight=off", "++tensorboard.enabled=false"]
FAST = [*FAST_BASE, "checkpoint=null"]


def compose_config(*overrides: str):
    """The real conf/config.yaml composed with `overrides`, as `python -m framework` would see it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_cli(*args: str, module: str = "framework", cwd=None, timeout: float = 600, env=None):
    """`python -m <module> args...` in a subprocess; returns CompletedProcess with text stdout/stderr."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def assert_clean_failure(result, pieces=()):
    """A user mistake through the CLI: non-zero exit, no traceback, and every piece of text in the message."""
    text = result.stderr + result.stdout
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    for piece in pieces:
        assert piece in text, (piece, text)


@pytest.fixture
def cli(tmp_path):
    """Run the CLI with outputs going under tmp_path."""

    def run(*args, module="framework", cwd=None, **kw):
        return run_cli(*args, module=module, cwd=cwd or tmp_path, **kw)

    return run


def fake_cifar_folder(folder, rng, extra=None):
    """A CIFAR-10 folder in the real format (pickled dicts of bytes keys, uint8 (20, 3072) data, a list of
    labels; `extra`, a dict, adds keys) with 20 random images per batch file; returns the folder."""
    import pickle

    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 20)), **(extra or {})}, f, protocol=2)
    return folder
