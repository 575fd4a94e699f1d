"""Which GEMM runs each product: the framework's register-tiled kernels.gemm or BLAS (kernels.gemm_blas), chosen by
measuring both once per machine and product shape, and remembered on disk.

The own kernel won by 1.9-2.6x on an AVX-512 machine and lost by 2.3-3.3x on an AVX2 one (DESIGN.md), so no fixed
rule is right everywhere. A product is (M, K, N, A transposed, dtype); the first run that needs it times both
paths on one core (best of a few calls, well under a second for all of a step's products) and stores the winner in
`<cache>/gemm/<machine>.json`, keyed by the CPU (model name, LLVM target and features, vector width, tile) and
the Numba and NumPy versions: the choice is then fixed for every later run on that machine. `FRAMEWORK_GEMM`
forces a path: `own`, `blas` or `auto` (default: measure). Each path is deterministic and does not depend on the
thread count (threads.gemm splits only the own kernel; BLAS is called once).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import platform
import time
from typing import NamedTuple

import numba
import numpy as np

from framework.kernels import dense as K
from framework.core.errors import ConfigError
from framework.core.files import write_json_atomic

log = logging.getLogger("framework")

MODES = ("auto", "own", "blas")
ENV = "FRAMEWORK_GEMM"
MARGIN = 0.05  # BLAS must be this much faster to win: ties keep the own kernel (and the fused path, W1)
BUDGET_S = 0.005  # timing budget per path and product (at least 3 timings each): a step's products in ~0.1 s


class Product(NamedTuple):
    """One GEMM shape of a step: C (m, n) = A (m, k) @ B (k, n); a_t: A is a transposed view (dW = x.T @ d)."""

    m: int
    k: int
    n: int
    a_t: bool
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.m}x{self.k}x{self.n}{' (A.T)' if self.a_t else ''} {self.dtype}"


def mode() -> str:
    """The forced path from $FRAMEWORK_GEMM, or 'auto'. A bad value is a user error (exit 2)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(ENV, os.environ.get(ENV), " | ".join(MODES),
                          "It picks the GEMM: the framework's own kernel, BLAS, or the faster of the two as "
                          "measured on this machine (auto, the default).")
    return value


def choose(own_s: float, blas_s: float, margin: float = MARGIN) -> str:
    """'blas' when BLAS took less than (1 - margin) of the own kernel's time, else 'own'. Times in seconds;
    a NaN or missing time never picks the path it belongs to."""
    if not blas_s > 0:
        return "own"
    if not own_s > 0:
        return "blas"
    return "blas" if blas_s < (1.0 - margin) * own_s else "own"


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo 'model name'; platform.processor() elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    """What the GEMM choice depends on: the CPU and the code Numba generates for it."""
    from numba.core.registry import cpu_target

    codegen = cpu_target.target_context.codegen()
    try:
        target, features = codegen._get_host_cpu_name(), codegen._tm_features
    except AttributeError:
        target, features = "", ""
    isa = {512: "AVX-512", 256: "AVX2" if _has_avx2(codegen) else "AVX"}.get(K.VECTOR_BITS, "SSE/other")
    return {"model": cpu_model(), "target": target, "isa": isa, "vector_bits": K.VECTOR_BITS,
            "vector_registers": K.VECTOR_REGISTERS, "tile": f"{K.TILE_ROWS}x{K.TILE_VECS}",
            "features_sha1": hashlib.sha1(features.encode()).hexdigest()[:12]}


def _has_avx2(codegen) -> bool:
    """Whether the target has 256-bit integer adds (AVX2; plain AVX splits them into two 128-bit halves)."""
    import llvmlite.binding as llvm

    text = """define void @probe(<8 x i32>* %p) {
  %v = load <8 x i32>, <8 x i32>* %p
  %w = add <8 x i32> %v, %v
  store <8 x i32> %w, <8 x i32>* %p
  ret void
}"""
    try:
        return "vpaddd\t%ymm" in codegen._tm.emit_assembly(llvm.parse_assembly(text))
    except Exception:
        return False


def machine_key() -> dict:
    """The cache key: a choice measured under another CPU, target or library version is not reused."""
    return {**cpu_info(), "numba": numba.__version__, "numpy": np.__version__}


def cache_path(key: dict | None = None) -> pathlib.Path:
    """<FRAMEWORK_CACHE_DIR or ~/.cache/framework>/gemm/<hash of the machine key>.json."""
    from framework.engine.fused import cache_dir

    key = machine_key() if key is None else key
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "gemm" / f"{digest}.json"


def load(path: pathlib.Path, key: dict) -> dict[Product, dict]:
    """Stored choices for `key` (empty when missing, unreadable or for another machine)."""
    try:
        payload = json.loads(path.read_text())
        if payload.get("key") != key:
            return {}
        return {Product(*e["product"]): {k: e[k] for k in ("path", "own_us", "blas_us")}
                for e in payload["choices"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def save(path: pathlib.Path, key: dict, choices: dict[Product, dict]) -> None:
    """Write the choices atomically (a concurrent run may win the race: both measured the same machine)."""
    entries = [{"product": list(p), **v} for p, v in sorted(choices.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": key, "choices": entries})


def _per_call(call, budget: float) -> float:
    """Seconds per product: call(reps) runs `reps` products in one compiled loop; reps is set so one timing
    lasts ~1 ms, and the best of >= 3 timings (more while under `budget`) shrugs off other processes."""
    t0 = time.perf_counter()
    call(1)
    reps = int(min(10_000, max(1, 1e-3 / max(time.perf_counter() - t0, 1e-8))))
    best, spent, rounds = float("inf"), 0.0, 0
    while rounds < 3 or (spent < budget and rounds < 20):
        t0 = time.perf_counter()
        call(reps)
        dt = time.perf_counter() - t0
        best, spent, rounds = min(best, dt / reps), spent + dt, rounds + 1
    return best


def measure(product: Product, own, blas, budget: float = BUDGET_S) -> tuple[float, float]:
    """(own seconds, BLAS seconds) per product on random data; own/blas(A, B, C, reps) compute C = A @ B reps
    times."""
    rng = np.random.default_rng(0)
    dtype = np.dtype(product.dtype)
    A = rng.standard_normal((product.k, product.m) if product.a_t else (product.m, product.k)).astype(dtype)
    A = A.T if product.a_t else A
    B = rng.standard_normal((product.k, product.n)).astype(dtype)
    C = np.empty((product.m, product.n), dtype=dtype)
    own(A, B, C, 1)  # compiles on a cold cache: not timed
    blas(A, B, C, 1)
    with _one_blas_thread():  # one core each: the choice must not depend on the thread count
        return _per_call(lambda r: own(A, B, C, r), budget), _per_call(lambda r: blas(A, B, C, r), budget)


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then BLAS keeps its threads (OPENBLAS_NUM_THREADS)
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


class Chooser:
    """The choices of this process: loaded from disk once, measured for new products, saved after."""

    def __init__(self):
        self.key: dict | None = None
        self.choices: dict[Product, dict] = {}
        self.used: dict[Product, str] = {}

    def _load(self) -> None:
        if self.key is None:
            self.key = machine_key()
            self.choices = load(cache_path(self.key), self.key)

    def paths(self, products, own, blas) -> dict[Product, str]:
        """The path of each product ('own' | 'blas'), measuring (and saving) the ones not seen on this machine."""
        forced = mode()
        out = {}
        if forced != "auto":
            out = {p: forced for p in products}
        else:
            self._load()
            new = [p for p in products if p not in self.choices]
            for p in new:
                own_s, blas_s = measure(p, own, blas)
                self.choices[p] = {"path": choose(own_s, blas_s), "own_us": round(own_s * 1e6, 2),
                                   "blas_us": round(blas_s * 1e6, 2)}
                log.debug("gemm %s: own %.1f us, blas %.1f us -> %s", p.label, own_s * 1e6, blas_s * 1e6,
                          self.choices[p]["path"])
            if new:
                try:
                    save(cache_path(self.key), self.key, self.choices)
                except OSError as exc:  # measured again by the next process; nothing else depends on it
                    log.warning("could not save the GEMM choices under %s (%s)", cache_path(self.key), exc)
            out = {p: self.choices[p]["path"] for p in products}
        self.used.update(out)
        return out

    def saving_us(self, products) -> float:
        """Microseconds BLAS saves over the own kernel on the products where it won (measured timings)."""
        total = 0.0
        for p in products:
            c = self.choices.get(p)
            if c and c["path"] == "blas":
                total += c["own_us"] - c["blas_us"]
        return total

    def record(self) -> dict:
        """What a run used, for its folder (e.g. `gemm.json`): the mode, the CPU and each product's path with
        the timings that chose it."""
        forced = mode()
        timings = self.choices if forced == "auto" else {}
        return {"mode": forced, "cpu": cpu_info(),
                "products": [{"product": p.label, "path": path,
                              # alone faster; the step may still keep the own kernel (threads.uses_blas)
                              **({"faster": timings[p]["path"], "own_us": timings[p]["own_us"],
                                  "blas_us": timings[p]["blas_us"]} if p in timings else {})}
                             for p, path in sorted(self.used.items())]}


CHOOSER = Chooser()


def record() -> dict:
    """The GEMM choices this process used (see Chooser.record): for the run folder."""
    return CHOOSER.record()


def mlp_products(sizes, n: int, dtype) -> list[Product]:
    """The products of one MLP step on n rows (sizes [D, H1, ..., C]): per layer the forward x @ W, the weight
    gradient x.T @ d, and for every layer but the first the input gradient d @ W.T (W.T materialized)."""
    name = np.dtype(dtype).name
    out = []
    for l in range(len(sizes) - 1):
        d_in, d_out = int(sizes[l]), int(sizes[l + 1])
        out.append(Product(n, d_in, d_out, False, name))
        out.append(Product(d_in, n, d_out, True, name))
        if l > 0:
            out.append(Product(n, d_out, d_in, False, name))
    return list(dict.fromkeys(out))
