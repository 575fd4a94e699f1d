"""Numerical kernels: pure `@njit(cache=True)` functions over arrays and scalars.

Paired `<op>_forward` / `<op>_backward` in the CS231n style; they write into preallocated outputs so the hot
loop allocates nothing. Shapes: N batch, D input features, H hidden units, C classes. Every kernel works for
float32 and float64 (compiled once per dtype). `error_model="numpy"` keeps divisions vectorisable.

The cache rule: a cached kernel calls only kernels of its own file. Numba's disk cache checks the caller's file
alone, so a cached caller in another file keeps a stale copy of a callee from here after this file changes
(numba#1833). Callers elsewhere are either plain Python (threads.py, the plugins' classes), uncached (the bench),
or generated modules whose names hash every kernel source (fused.py). tests/test_numba_cache_rule.py enforces it.
"""
from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

jit = njit(cache=True, error_model="numpy", nogil=True)
# For kernels that return a float64 sum: `reassoc` lets LLVM split the sum into vector lanes (3-5x faster on a
# (P,) vector). Only the order of that sum changes (last-bit differences); elementwise outputs stay bitwise equal.
# Thin wrappers inlined into their callers at Numba-IR level: each separately compiled function that links the GEMM
# tiles re-optimizes and re-emits their machine code (about 0.4 s each on a cold cache).
jit_inline = njit(cache=True, error_model="numpy", nogil=True, inline="always")
jit_sum = njit(cache=True, error_model="numpy", nogil=True, fastmath={"reassoc"})


# ----------------------------------------------------------------------------------------------------------------
# Register-tiled GEMM. OpenBLAS is limited here to its AVX2 kernels (OPENBLAS_CORETYPE=Haswell) and spends 1-4 us
# per call on the tiny products of a small MLP; this kernel keeps a TILE_ROWS x (up to 3 vectors) block of C in
# registers while it walks K, and measured 1.9-2.6x faster than single-threaded OpenBLAS on every product of the
# bench's W1-W3 (0.8-2.5 us for W1's, 180-245 GFLOP/s f32 on W2/W3's). Numba has no SIMD types, so the tile is
# an intrinsic that writes LLVM vector IR (FMA, masked loads and stores); everything around it is plain Numba.
# It lives in this file because Numba's disk cache tracks only the file of the function it compiles.
# ----------------------------------------------------------------------------------------------------------------
llvm.initialize_native_target()
_PROBE = """define void @probe(<{lanes} x float>* %p) {{
  %v = load <{lanes} x float>, <{lanes} x float>* %p
  %w = fadd <{lanes} x float> %v, %v
  store <{lanes} x float> %w, <{lanes} x float>* %p
  ret void
}}"""


def target_vector_bits() -> int:
    """Width of the vector registers of the CPU Numba compiles for: 512 (AVX-512), 256 (AVX/AVX2) or 128.

    Asked of Numba's own target machine, so NUMBA_CPU_NAME / NUMBA_CPU_FEATURES count, not only the host: one
    vector add is compiled and the register names LLVM picks are read. (NUMBA_CPU_NAME=haswell alone still
    passes the host's feature list, +avx512f included; add NUMBA_CPU_FEATURES=+64bit to get haswell's own.)"""
    try:
        from numba.core.registry import cpu_target
        machine = cpu_target.target_context.codegen()._tm
        for bits, register in ((512, "%zmm"), (256, "%ymm")):
            module = llvm.parse_assembly(_PROBE.format(lanes=bits // 32))
            if register in machine.emit_assembly(module):
                return bits
        return 128
    except Exception:  # a Numba without this internal: the host's features (what Numba uses by default)
        return 512 if "+avx512f" in llvm.get_host_cpu_features().flatten() else 256


def tile_shape(vector_registers: int, vecs: int = 3) -> tuple[int, int]:
    """(rows, vecs) of the GEMM tile for a register file: rows x vecs accumulators, vecs B loads and one A
    broadcast must fit, or the tile spills inside its inner loop (8 x 3 on AVX-512's 32 registers spilled on
    AVX2's 16: 30.9 vs 71.1 GFLOP/s for OpenBLAS). 32 -> 8 x 3 (28 live), 16 -> 4 x 3 (16 live)."""
    return max(1, min(8, (vector_registers - vecs - 1) // vecs)), vecs


def tall_rows(vector_registers: int, masks_in_registers: bool) -> int:
    """Rows of the 2-vector tile (a 17-32 column strip in float32, e.g. 25 filters): its rows x 2 accumulators,
    2 B loads, one A broadcast and (AVX2) 2 masks must fit. 32 -> 14, 16 -> 5. Taller than TILE_ROWS, each B row
    loaded feeds more FMAs: (1000, 75) @ (75, 25) 5-10% faster than in 8-row strips here."""
    return max(1, min(14, (vector_registers - 3 - (2 if masks_in_registers else 0)) // 2))


VECTOR_BITS = target_vector_bits()
VECTOR_REGISTERS = 32 if VECTOR_BITS == 512 else 16  # zmm0-31 with AVX-512; ymm/xmm0-15 otherwise (x86-64)
TILE_ROWS, TILE_VECS = tile_shape(VECTOR_REGISTERS)
TALL_ROWS = tall_rows(VECTOR_REGISTERS, VECTOR_BITS != 512)  # AVX-512 keeps masks in k registers
K_BLOCK = 256  # rows of B per pass: a 256 x 3-vector panel of B stays in L1/L2 while every row strip uses it
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
INIT, RELU, GATE = 1, 2, 4  # the tile's flags: start from Z; store relu(sum); store sum where G > 0 (else 0)


def _make_tile(rows: int, vecs: int, masked: bool = True):
    """Intrinsic tile(A, B, C, Z, G, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags) over data pointers
    (see _address): for r < rows, v < vecs
    C[i0+r, j0+v*VL : +VL] = (Z[(i0+r)*ldz + j0+v*VL : +VL] if init else 0) + sum_{k<kb} A[i0+r, k0+k] B[k0+k, ...]
    with A[i, k] at i*sa_i + k*sa_k (any layout, e.g. a transposed view), B rows at k*sb_k, contiguous within a
    row, C rows at i*ldc. Columns >= n are masked off (never read or written). Strides are in elements.
    flags: INIT (start from Z), RELU (store max(sum, 0), NaN kept: relu_inplace's numbers) and GATE (store the
    sum where G > 0 at C's own offset, else 0: relu_backward_inplace's numbers). G is read only with GATE.
    masked=False: plain loads and stores for blocks whose columns are all < n (the caller checks). On AVX2 the
    masks live in vector registers (3 of the 16) and their conversions in the loop; AVX-512 has mask registers."""

    @intrinsic
    def tile(typingctx, A, B, C, Z, G, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags):
        sig = types.void(A, B, C, Z, G, *([types.intp] * 11))

        def codegen(context, builder, signature, args):
            a, b, c, z, g, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags = args
            fty = context.get_value_type(A.dtype)  # A..Z are CPointer(dtype): one compile per dtype
            size = context.get_abi_sizeof(fty)
            lanes = VECTOR_BITS // (8 * size)
            vty = ir.VectorType(fty, lanes)
            mty = ir.VectorType(ir.IntType(1), lanes)
            vpty = ir.PointerType(vty)
            tag = f"v{lanes}f{8 * size}"
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.{tag}")
            mload = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vpty, _I32, mty, vty]), f"llvm.masked.load.{tag}.p0")
            mstore = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [vty, vpty, _I32, mty]), f"llvm.masked.store.{tag}.p0")
            ptr = {"a": a, "b": b, "c": c, "z": z, "g": g}
            zero = ir.Constant(vty, [0.0] * lanes)
            align = ir.Constant(_I32, size)

            def const(v):
                return ir.Constant(_I64, v)

            def splat(value, ty):
                vt = ir.VectorType(ty, lanes)
                v = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_I32, 0))
                return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                              ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))

            def vec_at(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vpty)

            cols = [builder.add(j0, const(v * lanes)) for v in range(vecs)]
            # lane < n - col, compared in ints as wide as the floats (AVX2's masked moves take such vectors)
            ity = ir.IntType(8 * size)
            lane_ids = ir.Constant(ir.VectorType(ity, lanes), list(range(lanes)))

            def mask_for(col):
                left = builder.sub(n, col)
                left = builder.select(builder.icmp_signed("<", left, const(0)), const(0), left)
                left = builder.select(builder.icmp_signed(">", left, const(lanes)), const(lanes), left)
                return builder.icmp_signed("<", lane_ids, splat(builder.trunc(left, ity) if size < 8 else left, ity))

            masks = [mask_for(col) for col in cols] if masked else [None] * vecs

            def load(base, offset, v):
                if masked:
                    return builder.call(mload, [vec_at(base, offset), align, masks[v], zero])
                return builder.load(vec_at(base, offset), align=size)

            def store(value, base, offset, v):
                if masked:
                    builder.call(mstore, [value, vec_at(base, offset), align, masks[v]])
                else:
                    builder.store(value, vec_at(base, offset), align=size)
            rows_at = [builder.add(i0, const(r)) for r in range(rows)]

            def flag(bit):
                return builder.icmp_signed("!=", builder.and_(flags, const(bit)), const(0))

            do_init, do_relu, do_gate = flag(INIT), flag(RELU), flag(GATE)
            start = [[builder.select(do_init, load(ptr["z"], builder.add(builder.mul(rows_at[r], ldz), cols[v]), v),
                                     zero) for v in range(vecs)] for r in range(rows)]
            entry = builder.block
            loop = builder.append_basic_block("tile.k")
            done = builder.append_basic_block("tile.store")
            builder.cbranch(builder.icmp_signed(">", kb, const(0)), loop, done)
            builder.position_at_end(loop)
            k = builder.phi(_I64)
            acc = [[builder.phi(vty) for _ in range(vecs)] for _ in range(rows)]
            kk = builder.add(k, k0)
            b_row = builder.mul(kk, sb_k)
            bv = [load(ptr["b"], builder.add(b_row, cols[v]), v) for v in range(vecs)]
            a_col = builder.mul(kk, sa_k)
            new = []
            for r in range(rows):
                av = splat(builder.load(builder.gep(ptr["a"], [builder.add(builder.mul(rows_at[r], sa_i), a_col)])),
                           fty)
                new.append([builder.call(fma, [av, bv[v], acc[r][v]]) for v in range(vecs)])
            k_next = builder.add(k, const(1))
            k.add_incoming(const(0), entry)
            k.add_incoming(k_next, loop)
            for r in range(rows):
                for v in range(vecs):
                    acc[r][v].add_incoming(start[r][v], entry)
                    acc[r][v].add_incoming(new[r][v], loop)
            builder.cbranch(builder.icmp_signed("<", k_next, kb), loop, done)
            builder.position_at_end(done)
            final = [[builder.phi(vty) for _ in range(vecs)] for _ in range(rows)]  # phis first in the block
            for r in range(rows):
                for v in range(vecs):
                    final[r][v].add_incoming(start[r][v], entry)
                    final[r][v].add_incoming(new[r][v], loop)
            at = [[builder.add(builder.mul(rows_at[r], ldc), cols[v]) for v in range(vecs)] for r in range(rows)]
            # RELU / GATE on the registers as they are stored: two store blocks, one branch (a branch per vector
            # cost ~1 s of cold compile; a second pass over the stored rows, or loading C itself as G, ran a 5-tap
            # product 3x slower: a load waits for a masked store to a neighbouring row's bytes). GATE: G's value
            # at C's offset, loaded just before the store (G > 0 is false for NaN). RELU: an ordered <= 0 keeps
            # NaN and turns -0.0 into 0.0, as relu_inplace does. The two are never asked of one product.
            gate_block = builder.append_basic_block("tile.gate")
            plain_block = builder.append_basic_block("tile.plain")
            end = builder.append_basic_block("tile.end")
            builder.cbranch(do_gate, gate_block, plain_block)
            builder.position_at_end(gate_block)
            for r in range(rows):
                for v in range(vecs):
                    keep = builder.fcmp_ordered(">", load(ptr["g"], at[r][v], v), zero)
                    store(builder.select(keep, final[r][v], zero), ptr["c"], at[r][v], v)
            builder.branch(end)
            builder.position_at_end(plain_block)
            relu_lanes = splat(do_relu, ir.IntType(1))
            for r in range(rows):
                for v in range(vecs):
                    clip = builder.and_(relu_lanes, builder.fcmp_ordered("<=", final[r][v], zero))
                    store(builder.select(clip, zero, final[r][v]), ptr["c"], at[r][v], v)
            builder.branch(end)
            builder.position_at_end(end)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# Six tiles keep the compiled code small (each kernel that calls gemm re-optimizes them): whole tiles without
# masks, strips of TILE_VECS masked vectors (the last columns), strips of 2 vectors (e.g. 25 or 32 filters: one A
# broadcast feeds both, 18% faster on a conv's (1000, 75) @ (75, 25) than two 1-vector passes), TALL_ROWS rows at a
# time and TILE_ROWS for the rows left, strips of 1 vector (narrow outputs like the class scores), and single rows
# of up to TILE_VECS vectors for the remainder (one row's FMA chains are latency-bound: three in flight instead of
# one made a 25-row weight gradient 7% faster). Every C element is still one FMA chain over k in order: the tile
# chosen never changes a number.
_tile_wide, _tile_two, _tile_narrow = _make_tile(TILE_ROWS, TILE_VECS), _make_tile(TILE_ROWS, 2), \
    _make_tile(TILE_ROWS, 1)
_tile_row = _make_tile(1, TILE_VECS)
_tile_full = _make_tile(TILE_ROWS, TILE_VECS, masked=False)  # the common case: a whole tile inside C
_tile_tall = _make_tile(TALL_ROWS, 2)  # strips exactly 2 vectors wide, TALL_ROWS rows at a time


@jit_inline
def _gemm_strip(A, B, C, Z, G, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags, vecs, rows, lanes):
    """One strip of `rows` (TILE_ROWS or fewer) rows of C by `vecs` (<= TILE_VECS) vectors of columns."""
    if rows == TILE_ROWS and j0 + TILE_VECS * lanes <= n:
        _tile_full(A, B, C, Z, G, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags)
    elif rows == TILE_ROWS and vecs == TILE_VECS:  # the last columns: only the last vector is partly masked
        _tile_wide(A, B, C, Z, G, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags)
    elif rows == TILE_ROWS and vecs == 2:  # 2 vectors left: both from one A broadcast
        _tile_two(A, B, C, Z, G, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags)
    elif rows == TILE_ROWS:  # 1 vector left (e.g. 10 class scores)
        _tile_narrow(A, B, C, Z, G, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags)
    else:  # the last rows: vectors past n are masked off entirely (no memory access)
        for i in range(i0, i0 + rows):
            _tile_row(A, B, C, Z, G, i, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ldz, n, flags)


@intrinsic
def _address(typingctx, arr):
    """The data pointer of an array, so the tiles compile once per dtype, not once per array layout."""

    def codegen(context, builder, signature, args):
        return context.make_array(arr)(context, builder, args[0]).data

    return types.CPointer(arr.dtype)(arr), codegen


@jit
def _gemm_blocks(A, B, C, Z, G, m, n, kdim, sa_i, sa_k, sb_k, ldc, ldz, flags, lanes):
    width = TILE_VECS * lanes
    store = flags & (RELU | GATE)  # on the last K block only: earlier ones store partial sums
    for j0 in range(0, n, width):
        vecs = min(TILE_VECS, (n - j0 + lanes - 1) // lanes)
        for k0 in range(0, max(kdim, 1), K_BLOCK):
            kb = min(K_BLOCK, kdim - k0)
            first = k0 == 0  # later K blocks continue from the partial sums already in C
            src, ld, start = (Z, ldz, flags & INIT) if first else (C, ldc, INIT)
            if k0 + K_BLOCK >= kdim:
                start |= store
            i1 = 0
            if vecs == 2 and TALL_ROWS > TILE_ROWS:
                while i1 + TALL_ROWS <= m:
                    _tile_tall(A, B, C, src, G, i1, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ld, n, start)
                    i1 += TALL_ROWS
            for i0 in range(i1, m, TILE_ROWS):
                _gemm_strip(A, B, C, src, G, i0, j0, k0, kb, sa_i, sa_k, sb_k, ldc, ld, n, start, vecs,
                            min(TILE_ROWS, m - i0), lanes)


@jit_inline
def gemm(A, B, C, Z, ldz, init, relu=False, gate=None):
    """C (M, N) = [Z +] A (M, K) @ B (K, N), single-threaded, deterministic.

    A: any strides (x.T views are fine); B, C: rows with unit column stride. With init, the sum starts from Z's
    rows at stride ldz (elements; 0 repeats one row, e.g. a bias (N,)), else from 0. Each C element is one FMA
    chain over k in order, blocked by K_BLOCK rows of B. As the sums are stored (no pass of their own, the numbers
    of the separate kernels): relu keeps max(C, 0) (relu_inplace); gate, an array of C's shape and strides,
    keeps C where gate > 0, else 0 (relu_backward_inplace(C, gate)); with another layout nothing is written."""
    m, kdim = A.shape
    n = B.shape[1]
    size = A.itemsize
    flags = (INIT if init else 0) | (RELU if relu else 0)
    gp = _address(C)
    if gate is not None:
        if gate.shape != C.shape or gate.strides != C.strides:
            return
        gp = _address(gate)
        flags |= GATE
    # np.int64(): callers pass constants, and a Literal argument would compile _gemm_blocks once per value
    _gemm_blocks(_address(A), _address(B), _address(C), _address(Z), gp, m, n, kdim, A.strides[0] // size,
                 A.strides[1] // size, B.strides[0] // size, C.strides[0] // size, np.int64(ldz),
                 np.int64(flags), VECTOR_BITS // (8 * size))


@jit_inline
def gemm_rows(a, a0, sa, m, B, c, c0, sc, z, init, relu=False, gate=None):
    """Rows of C laid out inside flat arrays: c[c0 + i*sc : + n] = [z[:n] +] a[a0 + i*sa : + k] @ B (k, n) for
    i < m; with init every row's sums start from z (e.g. a bias), else from 0. relu and gate as in gemm; gate is
    1-D, unit stride, c's size, read at c's offsets.

    A's rows may overlap (sa < k: the windows of a signal, as in a convolution's backward without col2im) and C's
    may be strided (every S-th position of an output). a, c: 1-D, unit stride; B: rows with unit column stride;
    z: 1-D (>= n,), read only with init; k = 0 writes zeros (or z). Does nothing unless every row lies inside a
    and c and rows of C do not overlap (sc >= n).
    Each C element is one FMA chain over k in order, as in gemm."""
    kdim, n = B.shape
    size = B.itemsize
    if (m <= 0 or a0 < 0 or sa < 0 or c0 < 0 or sc < n or a.strides[0] != size or c.strides[0] != size
            or (kdim > 0 and B.strides[1] != size) or a0 + (m - 1) * sa + kdim > a.size
            or c0 + (m - 1) * sc + n > c.size
            or (init and (z.ndim != 1 or z.size < n or z.strides[0] != size))):
        return
    flags = (INIT if init else 0) | (RELU if relu else 0)
    gp = _address(c[c0:])
    if gate is not None:
        if gate.ndim != 1 or gate.size != c.size or gate.strides[0] != size:
            return
        gp = _address(gate[c0:])
        flags |= GATE
    zp = _address(z) if init else _address(c[c0:])
    _gemm_blocks(_address(a[a0:]), _address(B), _address(c[c0:]), zp, gp, np.int64(m),
                 np.int64(n), np.int64(kdim), np.int64(sa), np.int64(1), np.int64(B.strides[0] // size),
                 np.int64(sc), np.int64(0 if init else sc), np.int64(flags),
                 np.int64(VECTOR_BITS // (8 * size)))


@jit
def gemm_blas(A, B, C, Z, ldz, init):
    """gemm's contract through BLAS (np.dot inside njit: SciPy's OpenBLAS, with its own threads): C (M, N) =
    A (M, K) @ B (K, N) [+ Z rows at stride ldz]. A and B contiguous in either order (x.T views are fine), C
    C-contiguous. Z is added after the product (gemm seeds its sums with it: last-bit differences)."""
    np.dot(A, B, C)
    if init:
        m, n = C.shape
        fz = Z.ravel()
        for i in range(m):
            for j in range(n):
                C[i, j] += fz[i * ldz + j]


@jit
def gemm_repeat(A, B, C, reps, blas):
    """C = A @ B `reps` times through gemm, or gemm_blas with blas: timing from inside compiled code, as the
    step calls them (a call from Python adds ~1 us of dispatch, as much as a small product takes)."""
    for _ in range(reps):
        if blas:  # typed int64 and bool, as the step's calls are: no extra Literal compile
            gemm_blas(A, B, C, C, np.int64(0), np.bool_(False))
        else:
            gemm(A, B, C, C, np.int64(0), np.bool_(False))


@jit
def transpose_into(W, out):
    """out (H, D) = W (D, H).T. Small W: row by row of W, scattering into columns of out (both stay in L1).
    Large W (512 x 512, a convnet's 8192 x 100): in 32 x 32 blocks written row by row of out, 3.5-4.5x faster
    than whole scattered columns. Does nothing unless out is (>= H, >= D)."""
    d, h = W.shape
    if out.shape[0] < h or out.shape[1] < d:
        return
    if d * h <= 16384:
        for i in range(d):
            for j in range(h):
                out[j, i] = W[i, j]
        return
    for j0 in range(0, h, 32):
        for i0 in range(0, d, 32):
            for j in range(j0, min(j0 + 32, h)):
                row = out[j]
                for i in range(i0, min(i0 + 32, d)):
                    row[i] = W[i, j]


@jit_inline
def affine_forward(x, W, b, out, relu=False):
    """out (N, H) = x (N, D) @ W (D, H) + b (H,); the bias seeds the accumulators (no second pass); relu: a ReLU
    applied as out is stored."""
    gemm(x, W, out, b, 0, True, relu)


@jit
def bias_grad(dout, db):
    """db (H,) = column sums of dout (N, H), summed in row order. (Through the GEMM tile, as a stride-0 row of ones
    times dout, it ran 1.7x faster at H = 25, but every kernel linking the tiles costs ~0.5 s of cold compile.)"""
    n, h = dout.shape
    for j in range(h):
        db[j] = 0.0
    # four rows a pass, added in row order: db is loaded and stored once per four rows instead of every row
    # (cnn1d's (1000, 25) float32: 1.8 against 3.0-3.2 us), the same sums bit for bit
    i = 0
    while i + 4 <= n:
        r0, r1, r2, r3 = dout[i], dout[i + 1], dout[i + 2], dout[i + 3]
        for j in range(h):
            db[j] = (((db[j] + r0[j]) + r1[j]) + r2[j]) + r3[j]
        i += 4
    for k in range(i, n):
        for j in range(h):
            db[j] += dout[k, j]


@jit_inline
def affine_backward(dout, x, W, dx, dW, db, need_dx, wt, gate=None):
    """Given dout (N, H): dW (D, H) = x.T @ dout; db (H,) summed in row order; dx (N, D) = dout @ W.T if need_dx,
    through wt, a (>= D*H,) scratch that takes W.T so the GEMM reads its rows contiguously; gate (dx's layout): dx
    stored only where gate > 0 (the backward of a ReLU whose output is gate)."""
    gemm(x.T, dout, dW, dW, 0, False)
    bias_grad(dout, db)
    if need_dx:
        d, h = W.shape
        WT = wt[:h * d].reshape(h, d)
        transpose_into(W, WT)
        gemm(dout, WT, dx, dx, 0, False, False, gate)


# exp of float32 values <= 0 as a polynomial, so the loop vectorizes (LLVM calls libm's scalar expf otherwise;
# Numba has a vector exp only with Intel's SVML): 2^-k table, Cody-Waite split of ln 2, Taylor to degree 7 on
# |r| <= ln2/2; at most 1.8 ulp from expf, and inputs below -87 give ~2^-126 instead of a denormal or 0.
_POW2_NEG = np.array([2.0 ** -k for k in range(128)], dtype=np.float32)
_LOG2E_F32, _LN2_HI_F32, _LN2_LO_F32 = np.float32(1.4426950408889634), np.float32(0.693359375), \
    np.float32(-2.12194440e-4)


@jit
def exp_nonpositive_f32(flat):
    """flat (K,) float32, all <= 0: flat = exp(flat) in place, vectorized (see _POW2_NEG)."""
    one, half, low = np.float32(1.0), np.float32(0.5), np.float32(-87.0)
    c2, c3, c4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
    c5, c6, c7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)
    zero, last = np.float32(0.0), np.float32(_POW2_NEG.size - 1)
    for i in range(flat.size):
        x = flat[i]
        x = low if x < low else x  # not max(): a NaN must stay NaN (a diverged loss has to read as one)
        k = np.floor(x * _LOG2E_F32 + half)
        r = x - k * _LN2_HI_F32 - k * _LN2_LO_F32
        p = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        # The table index, clamped while still a float: NaN or +inf (a diverged net) and positive inputs would
        # index outside the table (Numba checks no bounds; that was a SIGSEGV). NaN fails both tests and lands
        # on 0; p is NaN then anyway. In range (-87 <= x <= 0) nothing changes.
        j = -k
        j = j if j > zero else zero
        j = j if j < last else last
        flat[i] = p * _POW2_NEG[np.int32(j)]


@jit
def softmax_loss(scores, y, dscores):
    """Mean cross-entropy of scores (N, C) against labels y (N,); writes dscores (N, C). Returns float64.
    Stable: shifts each row by its max before exponentiating. float64 uses libm's exp; float32 the vectorized
    exp_nonpositive_f32 over the whole shifted block."""
    n, c = scores.shape
    loss = 0.0
    if scores.itemsize == 4:  # a compile-time constant: one branch survives per dtype
        for i in range(n):
            m = scores[i, 0]
            for j in range(1, c):
                if scores[i, j] > m:
                    m = scores[i, j]
            for j in range(c):
                dscores[i, j] = scores[i, j] - m
            loss -= dscores[i, y[i]]
        exp_nonpositive_f32(dscores.ravel())
        for i in range(n):
            total = 0.0
            for j in range(c):
                total += dscores[i, j]
            loss += np.log(total)
            scale = 1.0 / (total * n)
            for j in range(c):
                dscores[i, j] = dscores[i, j] * scale
            dscores[i, y[i]] -= 1.0 / n
        return loss / n
    for i in range(n):
        m = scores[i, 0]
        for j in range(1, c):
            if scores[i, j] > m:
                m = scores[i, j]
        total = 0.0
        for j in range(c):
            e = np.exp(scores[i, j] - m)
            dscores[i, j] = e
            total += e
        loss += np.log(total) - (scores[i, y[i]] - m)
        for j in range(c):
            dscores[i, j] = dscores[i, j] / total / n
        dscores[i, y[i]] -= 1.0 / n
    return loss / n


@jit
def svm_loss(scores, y, dscores):
    """Mean Weston-Watkins multiclass hinge loss, margin 1: sum_j!=y max(0, s_j - s_y + 1). Writes dscores."""
    n, c = scores.shape
    loss = 0.0
    for i in range(n):
        correct = scores[i, y[i]]
        count = 0
        for j in range(c):
            if j == y[i]:
                dscores[i, j] = 0.0
                continue
            margin = scores[i, j] - correct + 1.0
            if margin > 0:
                loss += margin
                dscores[i, j] = 1.0 / n
                count += 1
            else:
                dscores[i, j] = 0.0
        dscores[i, y[i]] = -count / n
    return loss / n


@jit_sum
def l2_penalty_grad(theta, mask, reg, grad):
    """Adds reg * theta * mask to grad; returns the penalty 0.5 * reg * sum(mask * theta**2) (float64).
    mask: (P,) 0/1 in theta's dtype; branch-free so it runs in full vectors, in theta's dtype."""
    r = theta.dtype.type(reg)
    total = 0.0
    for i in range(theta.size):
        w = theta[i] * mask[i]
        total += w * w
        grad[i] += r * w
    return 0.5 * reg * total


@jit
def gather_rows(X, idx, out):
    """out[k] = X[idx[k]] for a batch of row indices (N,)."""
    d = X.shape[1]
    for k in range(idx.size):  # element loops: slice assignment costs ~1.5 s of compile and runs 2-3x slower
        r = idx[k]
        for j in range(d):
            out[k, j] = X[r, j]


@jit
def ema_decay(decay, warmup, n):
    """The EMA decay of the update after n earlier ones: min(decay, (1+n)/(10+n)) when warmup (early averages
    are then not dominated by the init), else decay. The one place of the rule: the plain and fused steps call it."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


@jit
def ema_update(ema, theta, decay):
    """ema = decay * ema + (1 - decay) * theta, in place."""
    f = theta.dtype.type
    keep, decay = f(1.0 - decay), f(decay)
    for i in range(theta.size):
        ema[i] = decay * ema[i] + keep * theta[i]


@jit
def block_norms(vec, bounds, out):
    """out[k] = ||vec[bounds[k,0]:bounds[k,1]]||_2 for each block k (float64)."""
    for k in range(bounds.shape[0]):
        total = 0.0
        for i in range(bounds[k, 0], bounds[k, 1]):
            total += vec[i] * vec[i]
        out[k] = np.sqrt(total)


@jit
def block_diff_norms(a, b, bounds, out):
    """out[k] = ||a - b|| over block k: the applied update when a, b are theta after and before a step."""
    for k in range(bounds.shape[0]):
        total = 0.0
        for i in range(bounds[k, 0], bounds[k, 1]):
            d = a[i] - b[i]
            total += d * d
        out[k] = np.sqrt(total)


@jit
def soft_target_loss(scores, y, soft, idx, T, alpha, dscores):
    """Distillation loss (notes 6.6, Hinton et al. 2015) of scores (N, C) whose rows are the data rows idx (N,):
    the batch mean of alpha * CE(y, softmax(s)) + (1 - alpha) * T^2 * KL(soft || softmax(s / T)), with y (rows,)
    int64 labels and soft (rows, C) the teacher's probabilities at temperature T (KL, not cross-entropy: the
    same gradient, and the soft term reads 0 when the student matches). The soft term's gradient shrinks as
    1/T^2; the T^2 factor keeps it on the scale of the hard term. Writes dscores (N, C); returns the loss
    (float64). With alpha = 1 it equals softmax_loss bit for bit in float64 (float32 softmax_loss uses a
    polynomial exp)."""
    n, c = scores.shape
    inv_t = 1.0 / T
    loss = 0.0
    for i in range(n):
        r = idx[i]
        m = scores[i, 0]
        for j in range(1, c):
            if scores[i, j] > m:
                m = scores[i, j]
        total = 0.0
        total_t = 0.0
        q_sum = 0.0
        q_dot_s = 0.0
        q_log_q = 0.0
        for j in range(c):
            e = np.exp(scores[i, j] - m)
            dscores[i, j] = e
            total += e
            total_t += np.exp((scores[i, j] - m) * inv_t)
            q = soft[r, j]
            q_sum += q
            q_dot_s += q * (scores[i, j] - m)
            if q > 0:
                q_log_q += q * np.log(q)
        log_zt = np.log(total_t)
        kl = q_log_q + q_sum * log_zt - q_dot_s * inv_t  # sum_j q_j * (log q_j - log softmax(s / T)_j)
        loss += alpha * (np.log(total) - (scores[i, y[r]] - m)) + (1.0 - alpha) * T * T * kl
        for j in range(c):
            p_t = np.exp((scores[i, j] - m) * inv_t - log_zt)
            # d/ds of T^2 * KL(q || softmax(s/T)) = T * (sum(q) * p_T - q)
            dscores[i, j] = (alpha * (dscores[i, j] / total) + (1.0 - alpha) * T * (q_sum * p_t - soft[r, j])) / n
        dscores[i, y[r]] -= alpha / n
    return loss / n

