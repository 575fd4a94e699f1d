"""No kernel crashes or writes outside its arrays, whatever the values: NaN, +-inf and huge finite numbers (what a
diverging run produces) go into every jitted kernel of framework.kernels and every registered optimizer and
regularizer. Each array sits inside a larger buffer whose guard elements must come back untouched.

Numba checks no bounds, so an out-of-bounds write shows up here as a changed guard (or a crash); out-of-bounds
reads show up when these tests run with NUMBA_BOUNDSCHECK=1 (a separate NUMBA_CACHE_DIR keeps that build apart):

    NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR=.numba-boundscheck python -m pytest tests/test_kernel_robustness.py -q
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import framework
from framework.kernels import dense as K
from framework.core.layout import Layout

GUARD = 7  # elements before and after every array
SENTINEL = -12345.0
BIG = {np.float32: 1e38, np.float64: 1e308}


def special_values(dtype):
    big = BIG[dtype]
    return [np.nan, np.inf, -np.inf, big, -big]


class Buffers:
    """Arrays carved out of guarded buffers; `check()` asserts no guard changed."""

    def __init__(self, dtype, value, rng, where):
        self.dtype, self.value, self.rng, self.where = dtype, value, rng, where
        self.bases = []

    def _guarded(self, shape, dtype, fill):
        size = int(np.prod(shape, dtype=np.int64))
        base = np.empty(size + 2 * GUARD, dtype=dtype)
        base[:GUARD] = base[GUARD + size:] = SENTINEL if dtype != np.int64 else -99
        view = base[GUARD:GUARD + size].reshape(shape)
        view[...] = fill
        self.bases.append((base, size))
        return view

    def floats(self, shape, low=-1.0, high=1.0, special=True):
        """A float array of `shape`; in 'arrays' mode every third element (the first included) is the special
        value, the rest uniform in [low, high)."""
        normal = self.rng.uniform(low, high, size=shape).astype(self.dtype)
        if special and self.where == "arrays":
            flat = normal.reshape(-1)
            flat[::3] = self.value
        return self._guarded(shape, self.dtype, normal)

    def out(self, shape):
        """An output array (filled with garbage the kernel must overwrite or ignore)."""
        return self._guarded(shape, self.dtype, 3.0)

    def ints(self, values):
        values = np.asarray(values, dtype=np.int64)
        return self._guarded(values.shape, np.int64, values)

    def scalar(self, normal):
        """A float scalar argument: the special value in 'scalars' mode."""
        return float(self.value) if self.where == "scalars" else normal

    def check(self):
        for base, size in self.bases:
            guard = np.concatenate([base[:GUARD], base[GUARD + size:]])
            expected = SENTINEL if base.dtype != np.int64 else -99
            assert np.all(guard == expected), "a kernel wrote outside its array"


N, D, H, C = 5, 6, 7, 3
P = D * H + H + H * C + C


# One case per kernel: name -> function(buffers) returning (the call's result, the expected result shape or None
# for a kernel that returns nothing, () for a scalar). Integer inputs (indices, labels, sizes) are always valid.
def case_gemm(b):
    A, B = b.floats((9, 13)), b.floats((13, 19))
    Cout, bias = b.out((9, 19)), b.floats((19,))
    K.gemm(A, B, Cout, Cout, 0, False)
    K.gemm(A, B, Cout, bias, 0, True)
    K.gemm(A, B, Cout, bias, 0, True, True)  # relu at the stores
    K.gemm(A, B, Cout, bias, 0, True, False, b.floats((9, 19)))  # gated stores
    return K.gemm(b.floats((13, 9)).T, B, Cout, Cout, 0, False), None


def case_gemm_rows(b):
    a, B, z = b.floats((40,)), b.floats((9, 6)), b.floats((6,))
    c = b.out((60,))
    K.gemm_rows(a, 1, 4, 8, B, c, 0, 7, z, True)  # overlapping windows, strided C rows
    K.gemm_rows(a, 0, 4, 8, B[:], c, 12, 6, z, False)  # a's last window ends at its last value (28 + 9 = 37)
    K.gemm_rows(a, 0, 4, 8, B, c, 12, 6, z, False, True)  # relu at the stores
    K.gemm_rows(a, 0, 4, 8, B, c, 12, 6, z, True, False, b.floats((60,)))  # gated stores
    return K.gemm_rows(a, 0, 5, 4, B[:0], c, 3, 9, z, True), None  # no taps: rows = z


def case_gemm_blas(b):
    A, B = b.floats((9, 13)), b.floats((13, 19))
    Cout, bias = b.out((9, 19)), b.floats((19,))
    K.gemm_blas(A, B, Cout, Cout, 0, False)
    K.gemm_blas(A, B, Cout, bias, 0, True)
    return K.gemm_blas(b.floats((13, 9)).T, B, Cout, b.floats((9, 19)), 19, True), None


def case_gemm_repeat(b):
    A, B, Cout = b.floats((9, 13)), b.floats((13, 19)), b.out((9, 19))
    K.gemm_repeat(A, B, Cout, 2, False)
    return K.gemm_repeat(A, B, Cout, 2, True), None


def case_transpose_into(b):
    return K.transpose_into(b.floats((D, H)), b.out((H, D))), None


def case_affine_forward(b):
    return K.affine_forward(b.floats((N, D)), b.floats((D, H)), b.floats((H,)), b.out((N, H))), None


def case_bias_grad(b):
    return K.bias_grad(b.floats((N, H)), b.out((H,))), None


def case_affine_backward(b):
    args = b.floats((N, H)), b.floats((N, D)), b.floats((D, H)), b.out((N, D)), b.out((D, H)), b.out((H,))
    K.affine_backward(*args, False, b.out((D * H,)))
    return K.affine_backward(*args, True, b.out((D * H,))), None


def case_exp_nonpositive_f32(b):
    if b.dtype != np.float32:
        pytest.skip("float32 only")
    flat = b.floats((40,), -100.0, 0.0)
    K.exp_nonpositive_f32(flat)
    if b.where == "arrays" and np.isnan(b.value):
        assert np.all(np.isnan(flat[::3]))  # a NaN stays NaN: the run must see its divergence
    return None, None


def case_softmax_loss(b):
    return K.softmax_loss(b.floats((N, C)), b.ints([0, 2, 1, 1, 0]), b.out((N, C))), ()


def case_svm_loss(b):
    return K.svm_loss(b.floats((N, C)), b.ints([0, 2, 1, 1, 0]), b.out((N, C))), ()


def case_l2_penalty_grad(b):
    return K.l2_penalty_grad(b.floats((P,)), b.floats((P,), 0.0, 1.0, special=False), b.scalar(1e-3),
                             b.floats((P,))), ()


def case_gather_rows(b):
    return K.gather_rows(b.floats((9, D)), b.ints([8, 0, 3]), b.out((3, D))), None


def case_ema_update(b):
    return K.ema_update(b.floats((P,)), b.floats((P,)), b.scalar(0.99)), None


def case_ema_decay(b):
    return K.ema_decay(b.scalar(0.99), True, 3), ()


def case_block_norms(b):
    return K.block_norms(b.floats((P,)), b.ints([[0, D * H], [D * H, P]]), b.out((2,))), None


def case_block_diff_norms(b):
    return K.block_diff_norms(b.floats((P,)), b.floats((P,)), b.ints([[0, D * H], [D * H, P]]), b.out((2,))), None


def case_soft_target_loss(b):
    soft = b.floats((9, C), 0.0, 1.0)
    return K.soft_target_loss(b.floats((N, C)), b.ints(np.arange(9) % C), soft, b.ints([8, 0, 3, 3, 5]),
                              b.scalar(2.0), 0.5, b.out((N, C))), ()


CASES = {name[len("case_"):]: f for name, f in globals().items() if name.startswith("case_")}
# Helpers with no float input, or reached only through the cases above (raw pointers, inlined strips)
COVERED_BY = {"_gemm_blocks": "gemm", "_gemm_strip": "gemm"}


def test_every_kernel_has_a_case():
    jitted = {name for name, obj in vars(K).items()
              if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == K.__name__}
    assert jitted, "no kernels found"
    assert jitted - set(CASES) - set(COVERED_BY) == set()
    assert set(COVERED_BY.values()) <= set(CASES)


def _params():
    for dtype in (np.float32, np.float64):
        for value in special_values(dtype):
            for where in ("arrays", "scalars"):
                yield pytest.param(dtype, value, where, id=f"{dtype.__name__}-{value:g}-{where}")


@pytest.mark.parametrize("dtype,value,where", list(_params()))
@pytest.mark.parametrize("kernel", sorted(CASES))
def test_kernel_survives_special_values(kernel, dtype, value, where):
    b = Buffers(dtype, value, np.random.default_rng(0), where)
    result, shape = CASES[kernel](b)
    b.check()
    if shape is None:
        assert result is None
    elif shape == ():
        assert np.ndim(result) == 0
    else:
        assert result.shape == shape


def _guarded_state(b, state):
    """The optimizer state with every array moved into a guarded buffer."""
    return type(state)(*(b.ints(s) if s.dtype == np.int64 else b._guarded(s.shape, s.dtype, s) for s in state))


@pytest.mark.parametrize("dtype,value,where", list(_params()))
@pytest.mark.parametrize("name", framework.OPTIMIZERS.names())
def test_optimizer_survives_special_values(name, dtype, value, where):
    opt = framework.OPTIMIZERS.build(name)
    if opt.full_batch:
        pytest.skip(f"{name} has no kernel: it runs scipy on the full batch")
    b = Buffers(dtype, value, np.random.default_rng(1), where)
    theta, grad = b.floats((P,)), b.floats((P,))
    state = _guarded_state(b, opt.init(theta))
    for _ in range(3):  # slots that picked up the value are read again
        opt.apply(theta, grad, state, b.scalar(opt.lr))
    b.check()
    assert state.count[0] == 3 and theta.shape == (P,)
    if where == "arrays" and np.isnan(value):
        assert np.isnan(theta[0])  # NaN in, NaN out: the divergence check can see it


@pytest.mark.parametrize("dtype,value", [(d, v) for d in (np.float32, np.float64) for v in special_values(d)])
@pytest.mark.parametrize("name", framework.REGULARIZERS.names())
def test_regularizer_survives_special_values(name, dtype, value):
    reg = framework.REGULARIZERS.build(name, reg=1e-3) if name != "none" else framework.REGULARIZERS.build(name)
    layout = Layout([("W1", (D, H), True), ("b1", (H,), False), ("W2", (H, C), True), ("b2", (C,), False)])
    b = Buffers(dtype, value, np.random.default_rng(2), "arrays")
    theta, grad = b.floats((P,)), b.floats((P,))
    mask = reg.mask(layout, dtype)
    mask = b._guarded(mask.shape, dtype, mask)
    penalty = reg.penalty_grad(theta, grad, mask)
    reg.project(theta, layout)
    b.check()
    assert np.ndim(penalty) == 0


@pytest.mark.slow
@pytest.mark.parametrize("fused", ["true", "false"])
def test_float32_divergence_ends_as_diverged_not_a_crash(cli, tmp_path, fused):
    """Issue 13: `python -m framework epochs=3 dtype=float32 optimizer=sgd lr=1e3` died with SIGSEGV (exit 139)
    in the float32 exp once the scores turned NaN. It must end as the framework's normal divergence."""
    result = cli("epochs=3", "dtype=float32", "optimizer=sgd", "lr=1e3", f"fused_steps={fused}")
    text = result.stdout + result.stderr
    assert result.returncode == 3, text
    assert "Traceback" not in text
    summaries = list(tmp_path.glob("outputs/runs/*/*/summary.json"))
    assert [json.loads(p.read_text())["status"] for p in summaries] == ["diverged"]
