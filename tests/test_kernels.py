"""Every kernel against a plain-NumPy reference and against a centered-difference numerical gradient (float64)."""
import numpy as np
import pytest

from framework.kernels import dense as K


def numerical_grad(f, x, h=1e-6):
    """Centered difference df/dx for a scalar function f of the array x (modified in place, restored)."""
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g


def rel_err(a, b):
    return np.max(np.abs(a - b) / np.maximum(1e-12, np.abs(a) + np.abs(b)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (32, 64, 100), (32, 100, 10), (9, 3, 17), (17, 300, 49),
                                   (100, 32, 10), (7, 513, 130), (100, 75, 25), (31, 300, 14), (33, 5, 75)])
def test_gemm_matches_numpy(rng, dtype, m, k, n):
    """Every tile shape (full and partial row strips, 1-3 vectors, masked tails, tall 2-vector strips and the
    rows they leave, K beyond K_BLOCK), a transposed A, a bias row (ldz 0) and full Z rows, against NumPy in
    float64; columns outside C are never written."""
    tol = 1e-4 if dtype == np.float32 else 1e-12
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    ref = A.astype(np.float64) @ B.astype(np.float64)
    scale = np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64) + 1.0
    padded = np.full((m, n + 5), 7.0, dtype=dtype)
    C = padded[:, :n]
    K.gemm(A, B, C, C, 0, False)
    assert np.all(np.abs(C - ref) <= tol * scale)
    assert np.all(padded[:, n:] == 7.0)
    At = np.ascontiguousarray(A.T).T  # same values, column-major strides
    K.gemm(At, B, C, C, 0, False)
    assert np.all(np.abs(C - ref) <= tol * scale)
    bias = rng.standard_normal(n).astype(dtype)
    K.gemm(A, B, C, bias, 0, True)
    assert np.all(np.abs(C - (ref + bias)) <= tol * (scale + np.abs(bias)))
    Z = rng.standard_normal((m, n)).astype(dtype)
    K.gemm(A, B, C, Z, n, True)
    assert np.all(np.abs(C - (ref + Z)) <= tol * (scale + np.abs(Z)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,sa,k,n,sc", [(37, 50, 75, 25, 25), (9, 3, 7, 19, 40), (20, 2, 5, 25, 25), (5, 4, 0, 6, 9)])
def test_gemm_rows_reads_overlapping_windows_and_writes_strided_rows(rng, dtype, m, sa, k, n, sc):
    """Row i of A is the window a[a0 + i sa : + k] (windows overlap when sa < k), row i of C c[c0 + i sc : + n];
    with init a row z seeds every sum; k = 0 writes zeros (or z). Nothing between or around C's rows changes."""
    tol = 1e-4 if dtype == np.float32 else 1e-12
    a0, c0 = 3, 2
    a = rng.standard_normal(a0 + (m - 1) * sa + k + 4).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    z = rng.standard_normal(n).astype(dtype)
    A = np.stack([a[a0 + i * sa:a0 + i * sa + k] for i in range(m)]).astype(np.float64)
    ref = A @ B.astype(np.float64)
    scale = np.abs(A) @ np.abs(B).astype(np.float64) + 1.0
    for init, want in ((False, ref), (True, ref + z)):
        c = np.full(c0 + (m - 1) * sc + n + 3, 7.0, dtype=dtype)
        K.gemm_rows(a, a0, sa, m, B, c, c0, sc, z, init)
        got = np.stack([c[c0 + i * sc:c0 + i * sc + n] for i in range(m)])
        assert np.all(np.abs(got - want) <= tol * (scale + np.abs(z)))
        written = np.zeros(c.size, bool)
        for i in range(m):
            written[c0 + i * sc:c0 + i * sc + n] = True
        assert np.all(c[~written] == 7.0)


def test_gemm_rows_ignores_rows_outside_its_arrays(rng):
    """A row past the end of a or c, overlapping C rows (sc < n) or a short seed row: nothing is written."""
    a, B, z = rng.standard_normal(30), rng.standard_normal((5, 4)), rng.standard_normal(4)
    c = np.full(20, 7.0)
    K.gemm_rows(a, 0, 6, 5, B, c, 0, 4, z, False)  # the 5th window ends at 29 < 30: fine
    assert np.count_nonzero(c != 7.0) == 20
    for args in ((a, 2, 6, 5, B, c, 0, 4, z, False),  # window 5 would end at 31 > 30
                 (a, 0, 6, 5, B, c, 1, 4, z, False),  # C row 5 would end at 21
                 (a, 0, 6, 5, B, c, 0, 3, z, False),  # C rows overlap
                 (a, -1, 6, 2, B, c, 0, 4, z, False),
                 (a, 0, 6, 2, B, c, 0, 4, z[:3], True)):  # seed row shorter than a C row
        c[...] = 7.0
        K.gemm_rows(*args)
        assert np.all(c == 7.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(9, 3, 17), (17, 300, 49), (100, 75, 25), (3, 0, 5)])
def test_gemm_stores_relu_and_gate_as_the_separate_kernels_would(rng, dtype, m, k, n):
    """relu=True leaves what relu_inplace leaves after a plain gemm, and gate= what relu_backward_inplace does,
    bit for bit, NaN, inf and -0.0 included; with K beyond K_BLOCK (300) the partial sums of the first block are
    not clipped. gemm_rows the same on strided rows; a gate of another layout writes nothing."""
    from framework.layers import kernels_elementwise as KE
    A = rng.standard_normal((m, k)).astype(dtype)
    A[0, :1] = np.nan if k else 0
    B = rng.standard_normal((k, n)).astype(dtype)
    z = rng.standard_normal(n).astype(dtype)
    z[:3] = (np.inf, -np.inf, -0.0)
    plain = np.empty((m, n), dtype)
    K.gemm(A, B, plain, z, 0, True)
    want = plain.copy()
    KE.relu_inplace(want)
    got = np.full((m, n), 7.0, dtype)
    K.gemm(A, B, got, z, 0, True, True)
    assert np.array_equal(got, want, equal_nan=True) and np.array_equal(np.signbit(got), np.signbit(want))
    gate = rng.standard_normal((m, n)).astype(dtype)
    gate[0, :4] = (np.nan, 0.0, -0.0, np.inf)
    want = plain.copy()
    KE.relu_backward_inplace(want, gate)
    K.gemm(A, B, got, z, 0, True, False, gate)
    assert np.array_equal(got, want, equal_nan=True) and np.array_equal(np.signbit(got), np.signbit(want))
    got[...] = 7.0
    K.gemm(A, B, got, z, 0, True, False, gate.T.copy().T)  # column-major gate: refused
    assert np.all(got == 7.0)
    # the same on rows of flat arrays, C rows strided (n + 3 apart), the gate read at C's offsets
    flat_a = A.ravel()
    c = np.full(2 + m * (n + 3), 7.0, dtype)
    flat_gate = np.full(c.size, -1.0, dtype)
    for i in range(m):
        flat_gate[2 + i * (n + 3):2 + i * (n + 3) + n] = gate[i]
    for relu, g in ((True, None), (False, flat_gate)):
        K.gemm_rows(flat_a, 0, k, m, B, c, 2, n + 3, z, True, relu, g)
        rows = np.stack([c[2 + i * (n + 3):2 + i * (n + 3) + n] for i in range(m)])
        want = plain.copy()
        KE.relu_inplace(want) if relu else KE.relu_backward_inplace(want, gate)
        assert np.array_equal(rows, want, equal_nan=True) and np.array_equal(np.signbit(rows), np.signbit(want))
        assert c[0] == 7.0 and c[1] == 7.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,h", [(1000, 25), (7, 1), (0, 5), (2, 3), (300, 100)])
def test_bias_grad_sums_columns_in_row_order(rng, dtype, n, h):
    """The column sums of every row in order (a float64-free sequential sum, so bitwise equal to np.add's
    accumulate), also for a transposed (strided) dout."""
    d = rng.standard_normal((n, h)).astype(dtype)
    want = np.add.accumulate(d, axis=0)[-1] if n else np.zeros(h, dtype)
    db = np.full(h, 7.0, dtype)
    K.bias_grad(d, db)
    assert np.array_equal(db, want)
    K.bias_grad(np.asfortranarray(d), db)
    assert np.array_equal(db, want)


def test_gemm_is_deterministic(rng):
    A, B = rng.standard_normal((33, 700)), rng.standard_normal((700, 21))
    C1, C2 = np.empty((33, 21)), np.empty((33, 21))
    K.gemm(A, B, C1, C1, 0, False)
    K.gemm(A, B, C2, C2, 0, False)
    assert np.array_equal(C1, C2)


def test_affine_forward_backward(rng):
    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    out = np.empty((5, 3))
    K.affine_forward(x, W, b, out)
    np.testing.assert_allclose(out, x @ W + b, rtol=1e-14)
    dout = rng.standard_normal((5, 3))
    dx, dW, db = np.empty_like(x), np.empty_like(W), np.empty_like(b)
    K.affine_backward(dout, x, W, dx, dW, db, True, np.empty(W.size))
    np.testing.assert_allclose(dW, x.T @ dout, rtol=1e-13)
    np.testing.assert_allclose(db, dout.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(dx, dout @ W.T, rtol=1e-13)

    def f():
        return float(np.sum((x @ W + b) * dout))

    assert rel_err(dW, numerical_grad(f, W)) < 1e-7
    assert rel_err(db, numerical_grad(f, b)) < 1e-7
    assert rel_err(dx, numerical_grad(f, x)) < 1e-7


def softmax_ref(s, y):
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    d = p.copy()
    d[np.arange(len(y)), y] -= 1
    return loss, d / len(y)


def svm_ref(s, y):
    n = len(y)
    margins = np.maximum(0, s - s[np.arange(n), y][:, None] + 1)
    margins[np.arange(n), y] = 0
    d = (margins > 0).astype(float)
    d[np.arange(n), y] = -d.sum(axis=1)
    return margins.sum() / n, d / n


@pytest.mark.parametrize("kernel,ref", [(K.softmax_loss, softmax_ref), (K.svm_loss, svm_ref)])
def test_losses(rng, kernel, ref):
    s, y = rng.standard_normal((7, 4)) * 3, rng.integers(0, 4, 7)
    d = np.empty_like(s)
    loss = kernel(s, y, d)
    ref_loss, ref_d = ref(s, y)
    assert abs(loss - ref_loss) <= 1e-13 * abs(ref_loss)
    np.testing.assert_allclose(d, ref_d, rtol=1e-12, atol=1e-15)
    num = numerical_grad(lambda: kernel(s, y, np.empty_like(s)), s)
    assert rel_err(d, num) < 1e-6


def test_softmax_is_stable_for_huge_scores():
    s = np.array([[1000.0, 0.0, -1000.0]])
    d = np.empty_like(s)
    assert np.isfinite(K.softmax_loss(s, np.array([1]), d))
    assert K.softmax_loss(s, np.array([1]), d) == pytest.approx(1000.0)


def test_l2_penalty_grad(rng):
    theta, mask = rng.standard_normal(20), (rng.random(20) > 0.3).astype(float)
    grad = np.ones(20)
    pen = K.l2_penalty_grad(theta, mask, 0.3, grad)
    assert pen == pytest.approx(0.5 * 0.3 * np.sum(mask * theta ** 2), rel=1e-14)
    np.testing.assert_allclose(grad, 1 + 0.3 * mask * theta, rtol=1e-14)


def test_ema_and_norm_kernels(rng):
    a, b = rng.standard_normal(30), rng.standard_normal(30)
    ema = a.copy()
    K.ema_update(ema, b, 0.9)
    np.testing.assert_allclose(ema, 0.9 * a + (1 - 0.9) * b, rtol=1e-14)
    bounds = np.array([[0, 10], [10, 30]], dtype=np.int64)
    out = np.empty(2)
    K.block_norms(a, bounds, out)
    np.testing.assert_allclose(out, [np.linalg.norm(a[:10]), np.linalg.norm(a[10:])], rtol=1e-14)
    K.block_diff_norms(a, b, bounds, out)
    np.testing.assert_allclose(out, [np.linalg.norm((a - b)[:10]), np.linalg.norm((a - b)[10:])], rtol=1e-14)


def test_ema_decay_warms_up_then_holds():
    # the first update averages with weight 1/10 on the old value (the init), the 1000th near 0.991; never above decay
    assert K.ema_decay(0.999, True, 0) == 0.1
    assert K.ema_decay(0.999, True, 1000) == 1001.0 / 1010.0
    assert K.ema_decay(0.9, True, 1000) == 0.9
    assert K.ema_decay(0.999, False, 0) == 0.999


def test_float32_exp_is_within_two_ulp_of_libm():
    x = np.concatenate([-np.linspace(0, 87, 20001), [-0.0, -1e-30, -1e-7]]).astype(np.float32)
    got = x.copy()
    K.exp_nonpositive_f32(got)
    ref = np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - ref) / ulp) <= 2.0
    far = np.array([-88.0, -200.0, -np.inf], dtype=np.float32)
    K.exp_nonpositive_f32(far)
    assert np.all((far >= 0) & (far < 2e-38))  # clamped: negligible beside the row's max term (1)


def test_float32_softmax_matches_float64(rng):
    s, y = (rng.standard_normal((33, 10)) * 4).astype(np.float32), rng.integers(0, 10, 33)
    d32 = np.empty_like(s)
    loss32 = K.softmax_loss(s, y, d32)
    ref_loss, ref_d = softmax_ref(s.astype(np.float64), y)
    assert abs(loss32 - ref_loss) <= 1e-6 * abs(ref_loss)
    np.testing.assert_allclose(d32, ref_d, rtol=2e-6, atol=1e-8)
