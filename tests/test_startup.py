"""Start-up: a cold Numba cache is detected from its index files and announced before the first compile; the
default command imports only what a run uses; the pre-flight times its checks, not kernel loading."""
import importlib
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from framework.kernels.startup import cold_parts, index_is_fresh, load_kernels, prepare_kernels
from framework.engine.run import Run

from conftest import FAST, compose_config


def test_index_freshness_follows_numba_cache_files(tmp_path, monkeypatch):
    source = tmp_path / "tiny_kernel_mod.py"
    source.write_text(textwrap.dedent("""
        from numba import njit

        @njit(cache=True)
        def twice(x):
            return 2 * x
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("tiny_kernel_mod")
    assert index_is_fresh(module.twice) is False  # never compiled: no index file
    assert module.twice(3) == 6
    assert index_is_fresh(module.twice) is True  # compiled and saved next to the source
    later = time.time() + 5
    import os
    os.utime(source, (later, later))  # an edited source: Numba recompiles, so the cache counts as cold
    assert index_is_fresh(module.twice) is False
    assert index_is_fresh(len) is None  # not a jitted function: cannot tell


def test_a_new_fused_chunk_counts_as_cold_and_a_compiled_one_as_warm(tmp_path, monkeypatch):
    cfg = compose_config(*FAST, "epochs=1")
    load_kernels(Run(cfg, tmp_path / "first"), checks=False)  # the kernels in the usual caches (compiled once)
    monkeypatch.setenv("FRAMEWORK_CACHE_DIR", str(tmp_path / "chunks"))
    run = Run(cfg, tmp_path / "run")
    # the generated modules are new in this folder: Numba will compile the chunk and the model's step (every
    # built-in model is a layer list whose step is generated there too, framework.layers.step)
    assert cold_parts(run) == ["kernels", "chunk"]
    plan = run.fused_plan()
    plan.steps(0, 0)  # zero steps compile it (nothing of the run changes)
    assert cold_parts(run) == []


def test_prepare_kernels_leaves_the_run_unchanged(tmp_path):
    cfg = compose_config(*FAST, "epochs=2", "dtype=float32")
    ref = Run(cfg, tmp_path / "ref")
    run = Run(cfg, tmp_path / "run")
    theta, state = run.theta.copy(), [s.copy() for s in run.opt_state]
    order = run.rngs["order"].bit_generator.state
    prepare_kernels(run, checks=True)
    np.testing.assert_array_equal(run.theta, theta)
    assert all(np.array_equal(a, b) for a, b in zip(run.opt_state, state))
    assert run.rngs["order"].bit_generator.state == order and run.step == 0 and run.ema_count == 0
    assert run.fit()["metrics"] == ref.fit()["metrics"]


def test_default_command_imports_only_what_it_uses(tmp_path):
    """scikit-learn (2 s: scipy.stats, pandas), matplotlib and optuna stay out of a default run."""
    code = textwrap.dedent(f"""
        import sys, runpy
        sys.argv = ["framework", "epochs=1", "hydra.run.dir={tmp_path / 'run'}"]
        try:
            runpy.run_module("framework", run_name="__main__")
        except SystemExit:
            pass
        heavy = ["sklearn", "pandas", "scipy.stats", "matplotlib", "optuna"]
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "ok"


def test_preflight_reports_its_checks_without_kernel_loading(tmp_path):
    """After prepare_kernels the quick pre-flight of the default MLP measures only its checks: far under the
    ~0.5 s that the first kernel call (Numba's runtime) used to add to the data check. Loose bound: the
    machine running the suite may be busy."""
    from framework.checks.preflight import run_preflight

    run = Run(compose_config("epochs=1", "checkpoint=null", "++tensorboard.enabled=false"), tmp_path)
    prepare_kernels(run)
    report = run_preflight(run)
    assert report.passed and report.check("data").seconds < 0.2, str(report)


@pytest.mark.slow
def test_cold_cache_is_announced_before_the_first_compile(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba"), "FRAMEWORK_CACHE_DIR": str(tmp_path / "chunks")}
    args = ["model=softmax", "epochs=1", "checkpoint=null", "++tensorboard.enabled=false"]
    import os

    def run(name):
        return subprocess.run([sys.executable, "-m", "framework", *args, f"hydra.run.dir={tmp_path / name}"],
                              capture_output=True, text=True, timeout=900, cwd=tmp_path, env={**os.environ, **env})

    first = run("cold")
    assert first.returncode == 0, first.stderr
    text = first.stdout + first.stderr
    assert "compiling kernels once, ~" in text and "later runs start in ~1 s" in text
    assert text.index("compiling kernels once") < text.index("kernels compiled in") < text.index("Pre-flight")
    second = run("warm")
    assert second.returncode == 0 and "compiling" not in second.stdout + second.stderr


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (8, 9, 3), (30, 64, 3)])
def test_png_writer_round_trips_through_pillow(shape):
    """The first-layer image is a PNG written without Pillow; Pillow reads back the same pixels."""
    import io

    from PIL import Image

    from framework.monitoring.tensorboard import png_bytes

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape).astype(np.uint8)
    back = Image.open(io.BytesIO(png_bytes(pixels)))
    assert back.mode == ("L" if len(shape) == 2 else "RGB")
    np.testing.assert_array_equal(np.asarray(back), pixels)


def test_hand_built_text_and_hparams_summaries_equal_tensorboards_bytes(tmp_path):
    """text, hparams and session-end events are built without tensorboard's tensor_util (a TensorFlow stub, ~0.2 s
    of import); they must be the bytes tensorboard's own helpers make."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb
    from tensorboard.plugins.text.summary_v2 import text_pb

    from framework.monitoring.tensorboard import EventWriter

    writer = EventWriter(tmp_path)
    seen = []
    writer.add_summary = lambda summary, step: seen.append(summary.SerializeToString())
    values = {"lr": 1e-3, "epochs": 20, "model.name": "mlp", "fused_steps": True}
    writer.text("diagnostics", "**lr** looks fine: ü", 3)
    writer.hparams(values, ["val/acc"], start_time=123.5)
    writer.session_end(True, 7)
    writer.close()
    assert seen[0] == text_pb("diagnostics", "**lr** looks fine: ü").SerializeToString()

    def reference(tag, data):
        summary = summary_pb2.Summary()
        summary.value.add(tag=tag, tensor=metadata.NULL_TENSOR, metadata=metadata.create_summary_metadata(data))
        return summary.SerializeToString()

    experiment = summary_pb2.Summary.FromString(seen[1])
    assert experiment.value[0].tag == metadata.EXPERIMENT_TAG
    content = metadata.parse_experiment_plugin_data(experiment.value[0].metadata.plugin_data.content)
    assert [h.name for h in content.hparam_infos] == sorted(values)
    assert seen[1] == reference(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=content))
    assert seen[2] == hparams_pb(values, start_time_secs=123.5).SerializeToString()
    end = summary_pb2.Summary.FromString(seen[3])
    info = metadata.parse_session_end_info_plugin_data(end.value[0].metadata.plugin_data.content)
    assert info.status == api_pb2.STATUS_SUCCESS
    assert seen[3] == reference(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info))
