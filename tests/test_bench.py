"""framework.bench: the reference steps (plain NumPy, PyTorch) compute the framework's update, the measurement
code runs end to end on tiny sizes, the engine's kernels_stubbed hook leaves a run as it found it, and no benchmark
kernel breaks the Numba cache rule."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import test_numba_cache_rule as cache_rule
from benchmarks import breakdown, layer_profile, layered, peer_steps, reference_steps, report, suite
from framework.engine.fused import FusedSteps
from framework.engine.stubs import kernels_stubbed
from benchmarks.framework_runner import make_run
from benchmarks.workloads import WORKLOADS, Workload

TINY = [Workload("one_hidden", 7, (6,), 4, 3), Workload("two_hidden", 9, (8, 5), 3, 4)]
STEPS = 6


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is an optional extra (pip install framework[bench])")


def trained(workload, ema):
    """A float64 Run and reference steppers built from its initial theta; the Run then trains one epoch."""
    run = make_run(workload, "float64", STEPS, ema_decay=ema, seed=3)
    theta0 = run.theta.copy()
    refs = {"numpy": reference_steps.NumpySteps(run)}
    if peer_steps.torch_available():
        refs["torch"] = peer_steps.TorchSteps(run)
        refs["torch fused"] = peer_steps.TorchSteps(run, fused=True)
    run.train_epoch()
    assert not np.array_equal(run.theta, theta0)  # the comparison below is about a real update
    return run, refs


def feed(run, ref):
    """The reference takes the same batches, in the same order, as the framework's epoch."""
    B = run.settings.batch_size
    losses = []
    for b in range(run.steps_per_epoch):
        idx = run.perm[b * B:(b + 1) * B]
        losses.append(float(ref.step(idx)) if isinstance(ref, reference_steps.NumpySteps)
                      else ref.step(ref.torch.from_numpy(idx)).item())
    return losses


@pytest.mark.parametrize("workload", TINY, ids=lambda w: w.name)
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_numpy_reference_step_matches_framework(workload, ema):
    run, refs = trained(workload, ema)
    ref = refs["numpy"]
    losses = feed(run, ref)
    # the framework's recorded loss is data loss + L2 penalty, as the reference computes it
    np.testing.assert_allclose(losses, run.epoch_losses, rtol=1e-10, atol=0)
    np.testing.assert_allclose(ref.flat(), run.theta, rtol=1e-10, atol=1e-12)
    if ema:
        np.testing.assert_allclose(ref.flat("ema"), run.ema, rtol=1e-10, atol=1e-12)
    for name, m in ref.configs.items():  # Adam's moments too
        block = run.layout[name]
        np.testing.assert_allclose(m["m"].ravel(), run.opt_state.m[block.offset:block.stop], rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(m["v"].ravel(), run.opt_state.v[block.offset:block.stop], rtol=1e-9, atol=1e-18)


@pytest.mark.parametrize("workload", TINY, ids=lambda w: w.name)
@pytest.mark.parametrize("variant", ["torch", "torch fused"])
def test_torch_step_matches_framework(workload, variant):
    torch_or_skip()
    run, refs = trained(workload, 0.9)
    ref = refs[variant]
    feed(run, ref)
    np.testing.assert_allclose(ref.flat(), run.theta, rtol=1e-10, atol=1e-12)
    if variant == "torch":
        np.testing.assert_allclose(ref.flat("ema"), run.ema, rtol=1e-10, atol=1e-12)


def jax_or_skip():
    pytest.importorskip("jax", reason="jax is an optional bench peer (pip install jax optax)")
    pytest.importorskip("optax", reason="optax is an optional bench peer (pip install jax optax)")


@pytest.mark.parametrize("workload", TINY, ids=lambda w: w.name)
def test_jax_step_matches_framework(workload):
    """The JAX peer computes the framework's update: jitted steps and a lax.scan chunk over the same batches."""
    jax_or_skip()
    run = make_run(workload, "float64", STEPS, ema_decay=0.0, seed=3)
    theta0 = run.theta.copy()
    step, scan = peer_steps.JaxSteps(run), peer_steps.JaxSteps(run, scan=True)
    run.train_epoch()
    assert not np.array_equal(run.theta, theta0)

    def flat(ref):
        return np.concatenate([np.asarray(a).ravel() for W, b in ref.params for a in (W, b)])

    B = run.settings.batch_size
    for b in range(run.steps_per_epoch):
        step.step(step.jnp.asarray(run.perm[b * B:(b + 1) * B]))
    np.testing.assert_allclose(flat(step), run.theta, rtol=1e-9, atol=1e-12)
    scan.perm = run.perm.copy()  # one chunk of all the epoch's batches, in the framework's order
    assert scan.chunk == run.steps_per_epoch and scan.run_steps(STEPS) == STEPS
    np.testing.assert_allclose(flat(scan), run.theta, rtol=1e-9, atol=1e-12)


def test_jax_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # import jax now raises ImportError
    assert peer_steps.jax_available() is False


def test_reference_detects_a_different_update():
    """The comparison has teeth: a reference with another L2 strength ends elsewhere."""
    run, refs = trained(TINY[0], 0.0)
    ref = refs["numpy"]
    ref.hp["reg"] *= 10
    feed(run, ref)
    assert np.abs(ref.flat() - run.theta).max() > 1e-8


def test_workload_flop_counts():
    w1 = WORKLOADS["W1"]
    assert w1.params == 64 * 100 + 100 + 100 * 10 + 10
    assert w1.step_flops == 6 * 32 * w1.params
    # forward and dW for both layers, dX only for the second
    assert w1.exact_gemm_flops == 2 * 32 * (64 * 100 * 2 + 100 * 10 * 3)


def test_step_allocates_no_arrays():
    """tracemalloc sees no NumPy buffer per step (a (32, 64) batch copy alone would be 16 KiB) and the Numba
    runtime frees whatever it allocates (only argument wrappers)."""
    run = make_run(WORKLOADS["W1"], "float64", 21, ema_decay=0.99)
    alloc = breakdown.allocations(run, 100)
    assert alloc["steps"] >= 100
    assert alloc["traced_peak_bytes"] < 4096, alloc
    assert alloc["traced_net_bytes"] < 2048, alloc
    assert alloc["nrt_unfreed"] == 0, alloc


def test_bench_pair_smoke_on_tiny_sizes():
    """Every figure of one workload and dtype, from the real measurement code, on a tiny net."""
    wl = Workload("tiny", 8, (16,), 5, 4)
    with_torch, with_jax = peer_steps.torch_available(), peer_steps.jax_available()
    pair = suite.bench_pair(wl, "float64", rounds=2, block_s=0.002, alloc_steps=10, with_torch=with_torch,
                            profile_calls=5, steps_per_epoch=5, with_jax=with_jax)
    variants = {"fw", "fw+ema", "fw nomon", "fw+callbacks", "numpy"} | (
        {"torch", "torch fused", "torch+ema"} if with_torch else set()) | ({"jax", "jax scan"} if with_jax else set())
    assert set(pair["step_us"]) == variants
    for name, t in pair["times"].items():
        assert len(t["samples_s"]) == 2 and all(s > 0 for s in t["samples_s"]), name
        assert t["min_s"] <= t["median_s"]
    assert pair["vs_numpy"] == pytest.approx(pair["step_us"]["numpy"] / pair["step_us"]["fw"])
    assert pair["gemm_peak_gflops"] > 0
    assert pair["peak_fraction"] == pytest.approx(pair["exact_peak_fraction"] * wl.step_flops / wl.exact_gemm_flops)
    prof = pair["profile"]["fw+ema"]
    assert prof["ema"] > 0 and pair["profile"]["fw"]["ema"] == 0
    assert 0 < prof["gemm"] and 0 < prof["dispatch"]
    start = {"interpreter_and_imports_s": 0.3, "build_run_s": 0.1, "cpu_s": 1.0, "peak_rss_mb": 100.0}
    cold = start | {"to_first_step_s": 9.0, "first_step_s": 8.6}
    warm = start | {"to_first_step_s": 1.5, "first_step_s": 1.1}
    result = {"machine": suite.machine_info(1) | {"loadavg_end": (0.0, 0.0, 0.0), "bench_peak_rss_mb": 1.0},
              "repeats": 2, "pairs": [pair], "elapsed_s": 1.0,
              "startup": {"float64": {"cold": cold, "warm": [warm], "cold_s": 9.0, "warm_s": 1.5, "compile_s": 7.5}}}
    result["goals"] = report.judge(result)
    by_goal = {g["goal"]: g["pass"] for g in result["goals"]}
    assert by_goal["warm-cache start to first step <= 1 s [float64]"] is False  # 1.5 s
    assert by_goal["cold first compile <= 10 s [float64]"] is True  # 9 s
    text = report.report(result)
    assert "MISS  warm-cache start to first step <= 1 s [float64]: 1.50" in text
    assert "tiny 8-16-5 batch 4" in text
    cpu = result["machine"]["gemm_cpu"]
    assert f"GEMM target: {cpu['model']}" in text and cpu["isa"] in text and f"own tile {cpu['tile']}" in text
    paths = pair["gemm_paths"]
    assert paths["route"] in ("fused kernel", "GEMMs from Python") and paths["products"]
    assert set(paths["products"].values()) <= {"own", "blas"}
    assert all(label in text for label in paths["products"])
    if with_jax:
        assert pair["vs_jax"] == pytest.approx(pair["step_us"]["jax"] / pair["step_us"]["fw"])
        assert "tiny framework >= 1.0x the JAX jit step" not in by_goal  # goals are for W1-W3 only
    json.dumps(result)  # --json writes exactly this


TINY_LAYERED = [
    layered.LayeredWorkload("tiny_conv", "convnet", (3, 8, 8), 5, 4, (
        "{type:conv2d,filters:4,size:3,pad:1}", "relu", "{type:maxpool2d,size:2}", "{type:affine,units:6}", "relu",
        "{type:affine}")),
    layered.LayeredWorkload("tiny_cnn1d", "cnn1d", (2, 12), 5, 4),  # the preset's three strided conv1d
]


@pytest.mark.parametrize("workload", TINY_LAYERED, ids=lambda w: w.name)
@pytest.mark.parametrize("peer", ["torch", "jax"])
def test_layered_peers_compute_the_framework_step(workload, peer, tmp_path):
    """W4/W5's peers are the same net: from the Run's initial parameters, on the framework's batches, every step's
    loss (data + L2) equals the framework's in float64, so forward, backward, L2 and Adam all agree."""
    if peer == "torch":
        torch_or_skip()
    else:
        jax_or_skip()
    run = layered.make_layered_run(workload, "float64", STEPS, str(tmp_path), seed=3)
    ref = layered.TorchLayeredSteps(run) if peer == "torch" else layered.JaxLayeredSteps(run)
    run.train_epoch()
    B = run.settings.batch_size
    losses = []
    for b in range(STEPS):
        idx = run.perm[b * B:(b + 1) * B]
        loss = ref.step(ref.torch.from_numpy(idx)) if peer == "torch" else ref.step(idx)
        losses.append(float(loss.detach() if peer == "torch" else loss))
    assert len(set(np.round(run.epoch_losses, 6))) == STEPS  # the parameters really move
    np.testing.assert_allclose(losses, run.epoch_losses, rtol=1e-10, atol=0)


def test_layered_bench_smoke_on_tiny_sizes(tmp_path):
    """W4/W5's measurement code end to end on tiny nets: times, ratios, the report's table and the goals."""
    with_torch, with_jax = peer_steps.torch_available(), peer_steps.jax_available()
    pairs = [suite.bench_layered(wl, "float32", rounds=2, block_s=0.002, with_torch=with_torch, steps_per_epoch=5,
                                 with_jax=with_jax) for wl in TINY_LAYERED]
    for pair in pairs:
        assert set(pair["step_us"]) == {"fw"} | ({"torch"} if with_torch else set()) | ({"jax"} if with_jax else set())
        assert all(len(t["samples_s"]) == 2 and min(t["samples_s"]) > 0 for t in pair["times"].values())
        if with_torch:
            assert pair["vs_torch"] == pytest.approx(pair["step_us"]["torch"] / pair["step_us"]["fw"])
    # the goals of W4/W5 judge these rows when they carry the workloads' names
    named = [dict(p, workload=p["workload"].replace(wl.name, w)) for p, wl, w in zip(pairs, TINY_LAYERED, ("W4", "W5"))]
    result = {"machine": suite.machine_info(1) | {"loadavg_end": (0.0, 0.0, 0.0), "bench_peak_rss_mb": 1.0},
              "repeats": 2, "pairs": named, "elapsed_s": 1.0, "startup": {}}
    result["goals"] = report.judge(result)
    goals = {g["goal"]: g for g in result["goals"]}
    if with_torch:
        g = goals["W4 framework >= 1.3x PyTorch eager [float32]"]
        assert g["value"] == named[0]["vs_torch"] and g["pass"] == (g["value"] >= 1.3)
        assert "W5 framework >= 15x PyTorch eager [float32]" in goals
    if with_jax:
        assert goals["W5 framework >= 5x the JAX jit step [float32]"]["value"] == named[1]["vs_jax"]
    assert not any("monitoring overhead" in g for g in goals)  # not measured for layered rows
    text = report.report(result)
    assert "W4 convnet 3x8x8 batch 4" in text and "W5 cnn1d 2x12 batch 4" in text
    json.dumps(result)


@pytest.mark.slow
def test_layer_profile_times_every_layer_of_the_step():
    """benchmarks.layer_profile on the tiny cnn1d: one forward and one backward section per layer that has lines
    (flatten has none; a ReLU is done in the stores of the conv before it, and in those of the layer after it
    where that one writes each value of dx once: not the last conv, 3 -> 2 values, whose dx is col2im's sums), in
    the generated step's order, each a positive time, their sum the size of loss_grad's."""
    rows = dict(layer_profile.profile(TINY_LAYERED[1], "float64", reps=5, steps_per_epoch=3))
    names = [title.split(" ", 1)[1] for title in rows if title[0].isdigit()]
    assert names == ["conv1d + relu forward"] * 3 + ["affine forward", "affine + relu backward", "conv1d backward",
                                                     "relu backward", "conv1d + relu backward", "conv1d backward"]
    assert all(np.isfinite(t) and t > 0 for t in rows.values())
    whole = rows["loss_grad (forward, loss, backward)"]
    assert 0.3 * whole < rows["sections' sum"] < 3 * whole


def test_layered_workloads_are_the_issues():
    assert layered.LAYERED["W4"] == layered.LayeredWorkload("W4", "convnet", (3, 32, 32), 10, 50)
    assert layered.LAYERED["W5"] == layered.LayeredWorkload("W5", "cnn1d", (1, 40), 10, 100)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_kernels_stubbed_runs_the_loop_without_numbers_and_restores_the_run(fused):
    """Inside the hook an epoch runs every step but no kernel (theta stays); after it the run trains on exactly as
    its untouched twin (data order, Adam moments, EMA and counters restored), on the fused and the plain path."""
    runs = [make_run(TINY[1], "float64", STEPS, ema_decay=0.9, seed=3) for _ in range(2)]
    for run in runs:
        run.settings.fused_steps = fused
        run.train_epoch()  # the first loss is known and the fused chunk is planned, as in training
    stubbed, twin = runs
    assert FusedSteps.plan(stubbed) is not None  # so with fused_steps on, the epoch really runs as chunks
    theta, step = stubbed.theta.copy(), stubbed.step
    with kernels_stubbed(stubbed):
        stubbed.cursor = 0  # a new epoch: draws a permutation from the order stream
        stubbed.train_epoch()
        assert stubbed.step == step + STEPS
        np.testing.assert_array_equal(stubbed.theta, theta)
        # the plain step records the stub's loss; the stubbed chunk records none (the kernel writes them)
        np.testing.assert_array_equal(stubbed.epoch_losses, np.full(STEPS, np.nan if fused else 1.0))
    assert stubbed.step == step and stubbed.cursor == STEPS
    for run in runs:
        run.cursor = 0
        run.train_epoch()
    assert not np.array_equal(stubbed.theta, theta)  # the real kernels are back
    np.testing.assert_array_equal(stubbed.perm, twin.perm)
    np.testing.assert_array_equal(stubbed.theta, twin.theta)
    np.testing.assert_array_equal(stubbed.ema, twin.ema)
    np.testing.assert_array_equal(stubbed.epoch_losses, twin.epoch_losses)
    for a, b in zip(stubbed.opt_state, twin.opt_state):
        np.testing.assert_array_equal(a, b)
    assert (stubbed.step, stubbed.ema_count) == (twin.step, twin.ema_count)


def benchmark_sources():
    return sorted(cache_rule.ROOT.glob("benchmarks/**/*.py"))


def test_benchmark_kernels_keep_the_numba_cache_rule(monkeypatch):
    """Benchmark kernels that call framework kernels are not cached (a cached caller would keep a stale callee)."""
    monkeypatch.setattr(cache_rule, "SOURCES", cache_rule.SOURCES + benchmark_sources())
    assert not cache_rule.cross_file_calls(), "\n".join(cache_rule.cross_file_calls())


def test_the_cache_rule_sees_the_benchmark_kernels(monkeypatch):
    """The check above has teeth: were the uncached decorator a cached one, its GEMM kernels would be reported."""
    monkeypatch.setattr(cache_rule, "SOURCES", cache_rule.SOURCES + benchmark_sources())
    monkeypatch.setattr(cache_rule, "CACHED", cache_rule.CACHED | {"jit_uncached"})
    found = "\n".join(cache_rule.cross_file_calls())
    assert "own_gemm_pair calls framework.kernels.dense.gemm" in found
    assert "step_gemms calls framework.kernels.dense.gemm" in found


@pytest.mark.parametrize("args, piece", [
    (["workloads=[W9]"], "W9"),
    (["--workloads", "W4,W6"], "W6"),  # an old flag, translated to its key
    (["dtypes=[float16]"], "float16"),
    (["--dtypes", "float16"], "float16"),
    (["repeats=0"], "'repeats'"),
    (["--repeats", "0"], "'repeats'"),
    (["threads=0"], "'threads'"),
    (["json=no/such/folder/out.json"], "no/such/folder"),
    (["--json", "no/such/folder/out.json"], "no/such/folder"),
    (["treads=1"], "Did you mean threads"),
    (["--treads", "1"], "--treads"),
    (["epochs=2"], "'epochs' applies to e2e=true only"),
])
def test_cli_rejects_bad_options_before_any_work(args, piece, capsys, tmp_path, monkeypatch):
    from framework.cli import bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("benchmarks.cli.run_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    assert bench.main(args) == 2
    err = capsys.readouterr().err
    assert piece in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("old, new", [
    (["--quick", "--threads", "1"], ["quick=true", "threads=1"]),
    (["--workloads", "W4,W5", "--dtypes", "float32", "--threads", "1"],
     ["threads=1", "workloads=[W4,W5]", "dtypes=[float32]"]),
    (["--workloads=W2", "--repeats", "2", "--json", "out.json"], ["workloads=W2", "repeats=2", "json=out.json"]),
    (["--e2e", "--threads", "1", "--repeats", "1"], ["e2e=true", "threads=1", "repeats=1"]),
    (["--e2e", "--peers", "none", "--epochs", "2", "--rows", "1000", "--timeout", "60", "--keep", "work"],
     ["e2e=true", "peers=[]", "epochs=2", "rows=1000", "timeout=60", "keep=work"]),
    (["--e2e", "--peers", "torch,sklearn"], ["e2e=true", "peers=[torch,sklearn]"]),
])
def test_the_old_flags_are_aliases_of_the_keys(old, new, tmp_path, monkeypatch):
    """The commands written in older issues parse to the same options as their key=value form (parse only)."""
    from framework.cli.bench import parse

    monkeypatch.chdir(tmp_path)
    assert parse(old) == parse(new)


def test_bench_arguments_parse_to_their_values(tmp_path, monkeypatch):
    from framework.cli.bench import parse

    monkeypatch.chdir(tmp_path)
    opts = parse(["threads=1", "workloads=[W4,W5]", "dtypes=[float32]", "--repeats", "2"])
    assert (opts.e2e, opts.workloads, opts.dtypes, opts.threads, opts.repeats, opts.quick) == \
        (False, ["W4", "W5"], ["float32"], 1, 2, False)
    default = parse([])  # every workload and dtype; rounds and threads left to the benchmark (7 or 3, every core)
    assert (default.workloads, default.dtypes, default.repeats, default.threads) == \
        (["W1", "W2", "W3", "W4", "W5"], ["float32", "float64"], None, None)
    e2e = parse(["--e2e", "--peers", "none", "--epochs", "2", "--rows", "1000", "--keep", "a=b,c"])
    assert (e2e.e2e, e2e.peers, e2e.epochs, e2e.rows, e2e.keep, e2e.timeout) == (True, [], 2, 1000, "a=b,c", 900.0)
    assert list(tmp_path.iterdir()) == []  # parsing writes nothing


@pytest.mark.slow
def test_first_step_subprocess_reports_its_times(tmp_path):
    """The start-up probe: a fresh process builds the W1 Run and takes one step (warm or cold Numba cache)."""
    proc = subprocess.run([sys.executable, "-m", "framework.bench", "--first-step", "float64"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["t_main"] <= info["t_built"] <= info["t_done"]
    assert info["peak_rss_mb"] > 10


def test_w5_bound_times_the_products_of_w5s_step(tmp_path):
    """benchmarks.w5_bound's products of W5's step, from the model's own layers (1x40 signals, batch 100: lengths
    40 -> 20 -> 10 -> 5, 25 filters): per conv1d the forward (100 Lo, K C) @ (K C, 25), the weight gradient (the
    first layer's 5-value patch: one (8, 2000) @ (2000, 25); the others one (25, 100) @ (100, 75) per output
    position) and, after the first, dx by stride phases (taps 0 and 2: K = 50; tap 1: K = 25); then the affine
    layer's three on 125 features and 10 classes."""
    from benchmarks import w5_bound
    run = layered.make_layered_run(layered.LAYERED["W5"], "float32", 1, tmp_path)
    shapes = [p[1:] for p in w5_bound.products(run.model.layers, 100)]
    assert shapes == [(2000, 5, 25, 1), (8, 2000, 25, 1),
                      (1000, 75, 25, 1), (25, 100, 75, 10), (1000, 50, 25, 1), (1000, 25, 25, 1),
                      (500, 75, 25, 1), (25, 100, 75, 5), (500, 50, 25, 1), (500, 25, 25, 1),
                      (100, 125, 10, 1), (125, 100, 10, 1), (100, 10, 125, 1)]
    assert w5_bound.products(run.model.layers, 100)[3][0] == "conv2 dW 10 x (25, 100) @ (100, 75)"
    assert w5_bound.product_us(3, 4, 5, rounds=1) > 0
