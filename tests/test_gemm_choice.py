"""GEMM choice (framework.gemm_choice): the faster of the own kernel and BLAS per product, measured once per machine
and cached on disk; each forced path is correct and does not depend on the thread count."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from framework.layers import sequential as sequential_module
from framework.kernels import gemm_choice as G
from framework.kernels import dense as K
from framework.engine import threads
from framework.core.errors import ConfigError
from framework.engine.run import Run

from conftest import FAST, assert_clean_failure, compose_config


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty GEMM cache under tmp_path and a Chooser/threads memo that has seen nothing."""
    monkeypatch.setenv("FRAMEWORK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(G, "CHOOSER", G.Chooser())
    monkeypatch.setattr(threads, "_paths", {})
    monkeypatch.setattr(threads, "_uses_blas", {})
    return tmp_path


def fake_measure(table, calls):
    """measure() that reads (own us, blas us) from `table` keyed by (m, k, n) and counts its calls."""
    def measure(product, own, blas, budget=G.BUDGET_S):
        calls.append(product)
        own_us, blas_us = table[(product.m, product.k, product.n)]
        return own_us * 1e-6, blas_us * 1e-6
    return measure


@pytest.mark.parametrize("own_s,blas_s,want", [(10.0, 5.0, "blas"), (10.0, 9.6, "own"), (10.0, 9.4, "blas"),
                                               (5.0, 10.0, "own"), (10.0, 10.0, "own"), (float("nan"), 5.0, "blas"),
                                               (5.0, float("nan"), "own"), (5.0, 0.0, "own")])
def test_choose_prefers_own_unless_blas_is_clearly_faster(own_s, blas_s, want):
    assert G.choose(own_s, blas_s) == want


def test_mode_reads_the_environment(monkeypatch):
    for value, want in [("own", "own"), ("BLAS", "blas"), (" auto ", "auto"), ("", "auto")]:
        monkeypatch.setenv(G.ENV, value)
        assert G.mode() == want
    monkeypatch.setenv(G.ENV, "fastest")
    with pytest.raises(ConfigError) as err:
        G.mode()
    assert "FRAMEWORK_GEMM" in str(err.value) and "auto | own | blas" in str(err.value)
    assert err.value.exit_code == 2


def test_choices_are_measured_once_and_cached_per_machine(fresh, monkeypatch):
    monkeypatch.setenv(G.ENV, "auto")
    table = {(32, 64, 100): (2.0, 5.0), (64, 32, 100): (9.0, 3.0), (32, 100, 10): (1.0, 1.0)}
    calls = []
    monkeypatch.setattr(G, "measure", fake_measure(table, calls))
    products = [G.Product(32, 64, 100, False, "float32"), G.Product(64, 32, 100, True, "float32"),
                G.Product(32, 100, 10, False, "float32")]
    paths = G.CHOOSER.paths(products, None, None)
    assert [paths[p] for p in products] == ["own", "blas", "own"]
    assert len(calls) == 3
    path = G.cache_path()
    assert path.parent.parent == fresh / "cache" and path.suffix == ".json"
    payload = json.loads(path.read_text())
    assert payload["key"]["model"] == G.cpu_model() and payload["key"]["vector_bits"] == K.VECTOR_BITS
    assert payload["key"]["numba"] and payload["key"]["tile"] == f"{K.TILE_ROWS}x{K.TILE_VECS}"
    # round trip: a new process (a new Chooser) reads them back and measures nothing
    again = G.Chooser()
    assert again.paths(products, None, None) == paths and len(calls) == 3
    assert G.load(path, G.machine_key())[products[1]] == {"path": "blas", "own_us": 9.0, "blas_us": 3.0}
    # another CPU (or Numba) is another file, and a file of another machine is not trusted
    other = {**G.machine_key(), "model": "Some Other CPU", "vector_bits": 256}
    assert G.cache_path(other) != path
    assert G.load(path, other) == {}
    record = again.record()
    assert record["mode"] == "auto" and record["cpu"]["isa"] in ("AVX-512", "AVX2", "AVX", "SSE/other")
    assert {r["product"]: r["path"] for r in record["products"]}["64x32x100 (A.T) float32"] == "blas"
    json.dumps(record)  # the run folder gets it as JSON


@pytest.mark.parametrize("a_t", [False, True])
def test_measure_times_both_paths_on_the_product(a_t):
    seen = []

    def own(A, B, C, reps):
        seen.append((A.shape, A.strides[0] < A.strides[1], B.shape, C.shape, C.dtype))
        K.gemm_repeat(A, B, C, reps, False)

    own_s, blas_s = G.measure(G.Product(16, 20, 24, a_t, "float32"), own,
                              lambda A, B, C, reps: K.gemm_repeat(A, B, C, reps, True), budget=0.001)
    assert 0 < own_s < 0.1 and 0 < blas_s < 0.1
    assert seen[0] == ((16, 20), a_t, (20, 24), (16, 24), np.float32)


def test_a_damaged_cache_file_is_measured_again(fresh, monkeypatch):
    monkeypatch.setenv(G.ENV, "auto")
    calls = []
    monkeypatch.setattr(G, "measure", fake_measure({(8, 8, 8): (1.0, 2.0)}, calls))
    G.cache_path().parent.mkdir(parents=True)
    G.cache_path().write_text("{not json")
    assert G.CHOOSER.paths([G.Product(8, 8, 8, False, "float64")], None, None) == {
        G.Product(8, 8, 8, False, "float64"): "own"}
    assert len(calls) == 1 and json.loads(G.cache_path().read_text())["choices"]


def test_one_thread_leaves_the_fused_kernel_only_when_blas_saves_enough(fresh, monkeypatch):
    monkeypatch.setenv(G.ENV, "auto")
    sizes, n = [64, 100, 10], 32
    products = G.mlp_products(sizes, n, np.float32)
    assert [(p.m, p.k, p.n, p.a_t) for p in products] == [(32, 64, 100, False), (64, 32, 100, True),
                                                          (32, 100, 10, False), (100, 32, 10, True),
                                                          (32, 10, 100, False)]
    small = {(p.m, p.k, p.n): (2.0, 1.5) for p in products}  # BLAS wins each, by 0.5 us: not worth a step
    monkeypatch.setattr(G, "measure", fake_measure(small, []))
    assert threads.uses_blas(sizes, n, np.float32) is False
    rows = G.CHOOSER.record()["products"]
    assert {r["path"] for r in rows} == {"own"} and {r["faster"] for r in rows} == {"blas"}
    assert {(r["own_us"], r["blas_us"]) for r in rows} == {(2.0, 1.5)}
    monkeypatch.setattr(G, "CHOOSER", G.Chooser())
    monkeypatch.setattr(threads, "_uses_blas", {})
    G.cache_path().unlink()
    big = {(p.m, p.k, p.n): (200.0, 50.0) for p in products}
    monkeypatch.setattr(G, "measure", fake_measure(big, []))
    assert threads.uses_blas(sizes, n, np.float32) is True
    for forced, want in (("own", False), ("blas", True)):
        monkeypatch.setenv(G.ENV, forced)
        assert threads.uses_blas(sizes, n, np.float32) is want


@pytest.mark.parametrize("forced", ["own", "blas"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_forced_path_matches_numpy_and_ignores_the_thread_count(fresh, monkeypatch, forced, dtype):
    monkeypatch.setenv(G.ENV, forced)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(0)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for m, k, n, a_t in [(203, 70, 33, False), (33, 70, 203, False), (70, 203, 33, True), (5, 300, 7, False)]:
        A = rng.standard_normal((k, m) if a_t else (m, k)).astype(dtype)
        A = A.T if a_t else A
        B, bias = rng.standard_normal((k, n)).astype(dtype), rng.standard_normal(n).astype(dtype)
        ref = A.astype(np.float64) @ B.astype(np.float64) + bias
        scale = np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64) + np.abs(bias) + 1.0
        outs = []
        for parts in (1, 2):
            C = np.full((m, n), np.nan, dtype=dtype)
            threads.gemm(A, B, C, bias, 0, True, parts)
            assert np.all(np.abs(C - ref) <= tol * scale)
            outs.append(C)
        assert np.array_equal(outs[0], outs[1])
        assert G.CHOOSER.used[threads.product(A, B)] == forced


def fit(tmp_path, parts, *overrides, monkeypatch):
    monkeypatch.setattr(sequential_module, "WIDE_MIN_WORK", 0)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(threads, "threads", lambda: parts)
    run = Run(compose_config(*FAST, "epochs=2", "model.hidden_sizes=[40,24]", *overrides), tmp_path / str(parts))
    run.fit()
    return run


@pytest.mark.parametrize("forced", ["own", "blas"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_on_each_path_is_bit_identical_across_threads(fresh, monkeypatch, forced, dtype):
    monkeypatch.setenv(G.ENV, forced)
    one = fit(fresh, 1, f"dtype={dtype}", monkeypatch=monkeypatch)
    two = fit(fresh, 2, f"dtype={dtype}", monkeypatch=monkeypatch)
    assert np.array_equal(one.theta, two.theta)
    np.testing.assert_equal(one.history, two.history)
    assert one.history["val/acc"][-1] > 0.4  # learning (chance 0.1): both paths compute the real gradient
    if forced == "blas":  # a one-thread step left the fused kernel to use BLAS
        assert one.model.fused_loss(32) is None


def test_auto_choice_is_the_same_for_every_thread_count(fresh, monkeypatch):
    """In auto mode the choice (here BLAS, by far, for the first layer's products) does not depend on the thread
    count, so the numbers do not either; the one-thread step leaves the fused kernel to use it."""
    monkeypatch.setenv(G.ENV, "auto")
    table = {}

    def measure(product, own, blas, budget=G.BUDGET_S):
        first = product.n == 40 or product.k == 40 and product.a_t is False and product.m != 40
        table[product] = "blas" if first else "own"
        return (500e-6, 100e-6) if first else (1e-6, 2e-6)

    monkeypatch.setattr(G, "measure", measure)
    one = fit(fresh, 1, monkeypatch=monkeypatch)
    assert one.model.fused_loss(32) is None and "blas" in table.values()
    two = fit(fresh, 2, monkeypatch=monkeypatch)
    assert np.array_equal(one.theta, two.theta)
    monkeypatch.setenv(G.ENV, "own")
    own = fit(fresh / "own", 1, monkeypatch=monkeypatch)
    assert not np.array_equal(one.theta, own.theta)  # BLAS really ran (last-bit differences)
    np.testing.assert_allclose(one.theta, own.theta, rtol=0, atol=1e-9)


def test_forced_paths_train_to_close_numbers(fresh, monkeypatch):
    runs = {}
    for forced in ("own", "blas"):
        monkeypatch.setenv(G.ENV, forced)
        runs[forced] = fit(fresh / forced, 1, monkeypatch=monkeypatch)
    np.testing.assert_allclose(runs["own"].theta, runs["blas"].theta, rtol=0, atol=1e-9)


@pytest.mark.slow
def test_bad_mode_is_a_clean_user_error(cli):
    result = cli(*FAST, "epochs=1", env={"FRAMEWORK_GEMM": "fastest"})
    assert_clean_failure(result, ["FRAMEWORK_GEMM", "'fastest'", "auto | own | blas"])
    assert result.returncode == 2


PROBE = """
import numpy as np
from framework.kernels import dense as K
rng = np.random.default_rng(0)
A, B = rng.standard_normal((37, 300)).astype(np.float32), rng.standard_normal((300, 70)).astype(np.float32)
C = np.empty((37, 70), np.float32)
K.gemm_repeat(A, B, C, 1, False)  # whole tiles, masked last columns, single rows, two K blocks
assert np.allclose(C, A.astype(np.float64) @ B, atol=1e-3)
B2, C2 = B[:, :14].copy(), np.empty((37, 14), np.float32)  # two vectors of 8 lanes: the tall tile
K.gemm_repeat(A, B2, C2, 1, False)
assert np.allclose(C2, A.astype(np.float64) @ B2, atol=1e-3)
asm = "".join(K.gemm_repeat.inspect_asm().values())
from framework.kernels.gemm_choice import cpu_info
print(K.VECTOR_BITS, K.TILE_ROWS, K.TILE_VECS, K.TALL_ROWS, "%zmm" in asm, "%ymm" in asm, cpu_info()["isa"])
"""


@pytest.mark.slow
def test_tile_follows_the_compile_target_not_the_host(tmp_path):
    """NUMBA_CPU_NAME=haswell with haswell's own features makes Numba emit AVX2 code: the tile must then use
    256-bit vectors and the 16-register shape, even on an AVX-512 host."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "NUMBA_CPU_NAME": "haswell",
           "NUMBA_CPU_FEATURES": "+64bit"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["256", "4", "3", "5", "False", "True", "AVX2"]


def test_tile_shape_fits_the_register_file():
    assert K.tile_shape(32) == (8, 3)  # 24 accumulators + 3 B loads + 1 broadcast = 28 <= 32
    assert K.tile_shape(16) == (4, 3)  # 12 + 3 + 1 = 16
    for registers in (16, 32):
        rows, vecs = K.tile_shape(registers)
        assert rows * vecs + vecs + 1 <= registers
    assert K.VECTOR_REGISTERS == (32 if K.VECTOR_BITS == 512 else 16)
    assert (K.TILE_ROWS, K.TILE_VECS) == K.tile_shape(K.VECTOR_REGISTERS)
    # the 2-vector tile: 14 x 2 accumulators + 2 B loads + 1 broadcast = 31 <= 32; AVX2 also holds 2 masks
    assert K.tall_rows(32, False) == 14 and K.tall_rows(16, True) == 5
    for registers, masks in ((16, True), (32, False)):
        assert 2 * K.tall_rows(registers, masks) + 3 + (2 if masks else 0) <= registers
    assert K.TALL_ROWS == K.tall_rows(K.VECTOR_REGISTERS, K.VECTOR_BITS != 512)
