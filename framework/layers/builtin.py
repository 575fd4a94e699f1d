"""The built-in layers, registered in LAYERS with the same decorator a user layer uses.

Each layer's forward and backward are source lines for the generated step (framework.layers.step) calling the
kernels of kernels_conv / kernels_pool / kernels_elementwise and framework.kernels.dense's GEMM; shapes per example are
channels last (see spec.py). Parameters: W blocks decay, b blocks do not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.kernels import dense as K
from framework.core.errors import ConfigError
from framework.core.params import param
from framework.core.registry import LAYERS
from framework.engine import threads as T
from . import kernels_conv as KC
from . import kernels_elementwise as KE
from . import kernels_norm as KN
from . import kernels_pool as KP
from .spec import INITS, Layer, describe_shape, init_weights


# ---------------------------------------------------------------------------------------------------------------
# affine
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class AffineConfig:
    units: int = param(0, "outputs H; 0 = one per class (the last layer)", range="[0, inf)")
    init: str = param("he", "weight init: small (std 0.01), xavier (sqrt(1/fan_in)), he (sqrt(2/fan_in))",
                      choices=INITS)
    init_scale: float = param(1.0, "multiplier on the init std", range="(0, inf)")


@LAYERS.register("affine", config=AffineConfig)
class Affine(Layer):
    """Fully connected: out (N, H) = x (N, D) @ W (D, H) + b (H,); any input shape is flattened (channels last)."""

    kernels = (K.affine_forward, K.affine_backward, T.affine_forward_threads, T.affine_backward_threads)
    threadable = True
    small_std = 0.01  # std of init "small" (times init_scale) and of the chance-loss check's weights

    def output_shape(self, in_shape, num_classes, where):
        return (self.cfg.units or num_classes,)

    def blocks(self):
        return [("W", (self.in_size, self.out_size), True), ("b", (self.out_size,), False)]

    def init(self, rng, views, small):
        init_weights(views["W"], rng, self.in_size, self.cfg.init, self.cfg.init_scale, small, self.small_std)

    def scratch_floats(self):
        return self.in_size * self.out_size  # W.T for dx (affine_backward)

    def stores_relu(self):
        return True

    def gates_dx(self):
        return True

    def forward(self, v):
        if v.wide:  # the same GEMM calls, each split over `parts` threads or on BLAS (engine.threads)
            return f"affine_forward_threads({v.x}, {v.p['W']}, {v.p['b']}, {v.out}, parts)"
        return f"affine_forward({v.x}, {v.p['W']}, {v.p['b']}, {v.out}{', True' if v.relu else ''})"

    def backward(self, v):
        dx = v.dx if v.need_dx else v.dout
        name, extra = ("affine_backward_threads", ", parts") if v.wide else ("affine_backward", "")
        extra += f", {v.gate}" if v.gate else ""
        return (f"{name}({v.dout}, {v.x}, {v.p['W']}, {dx}, {v.g['W']}, {v.g['b']}, {v.need_dx}, "
                f"{v.scratch}{extra})")


# ---------------------------------------------------------------------------------------------------------------
# convolutions: im2col of one image, then one GEMM per image (conv1d is conv2d with H = KH = SH = 1, no H pad);
# conv1d with L = Lo * stride reads its windows in place (_Conv._windows, _Conv._phase_dx)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ConvConfig:
    filters: int = param(16, "output channels F", range="[1, inf)")
    size: int = param(3, "kernel side K (K x K for conv2d, K for conv1d)", range="[1, inf)")
    stride: int = param(1, "step between kernel positions", range="[1, inf)")
    pad: int = param(0, "zeros added on each side (K // 2 with stride 1 keeps the size)", range="[0, inf)")
    init: str = param("he", "weight init: small (std 0.01), xavier (sqrt(1/fan_in)), he (sqrt(2/fan_in))",
                      choices=INITS)
    init_scale: float = param(1.0, "multiplier on the init std", range="(0, inf)")


BATCHED_COLUMNS = 16384  # im2col values per image up to which a convolution works on the whole batch at once
IN_PLACE = True  # conv1d with L = Lo * stride reads its windows where they are (see _Conv._windows); tests turn it off
SMALL_PATCH = 8  # kept im2col columns of a patch smaller than this (a whole GEMM tile of weight-gradient rows)


class _Conv(Layer):
    """Shared body of conv2d and conv1d; subclasses give the 2-D geometry (H, W, C, KH, KW, SH, SW, PH, PW)."""

    kernels = (KC.im2col, KC.im2col_batch, KC.im2col_1d_batch, KC.col2im, KC.col2im_batch, KC.split_weight_grad,
               KC.split_weight_rows, KC.stack_taps, K.gemm, K.gemm_rows, K.transpose_into, K.bias_grad)
    dims = 2

    def output_shape(self, in_shape, num_classes, where):
        if len(in_shape) != self.dims:
            want = "(C, H, W) images" if self.dims == 3 else "(C, L) signals"
            raise ConfigError(where, self.name, f"a layer for its input: {self.name} takes {want}, this input is "
                                                f"{describe_shape(in_shape)} (set model.input_shape, or use "
                                                f"{'conv1d' if self.dims == 3 else 'conv2d'})")
        g = self.geometry(in_shape)
        H, W, C, KH, KW, SH, SW, PH, PW = g
        ho, wo = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
        if H + 2 * PH < KH or W + 2 * PW < KW:
            raise ConfigError(f"{where}.size", self.cfg.size, f"a kernel no larger than the padded input "
                                                              f"{describe_shape(in_shape)} (pad {self.cfg.pad})")
        self.ho, self.wo = ho, wo
        F = self.cfg.filters
        return (ho, wo, F) if self.dims == 3 else (wo, F)

    def geometry(self, in_shape):
        raise NotImplementedError

    def blocks(self):
        H, W, C, KH, KW, *_ = self.geometry(self.in_shape)
        return [("W", (KH, KW, C, self.cfg.filters), True), ("b", (self.cfg.filters,), False)]

    def init(self, rng, views, small):
        H, W, C, KH, KW, *_ = self.geometry(self.in_shape)
        init_weights(views["W"], rng, KH * KW * C, self.cfg.init, self.cfg.init_scale, small)

    def _sizes(self):
        H, W, C, KH, KW, *_ = self.geometry(self.in_shape)
        return self.ho * self.wo, KH * KW * C, self.cfg.filters

    def batched(self) -> bool:
        """Small images: im2col of the whole batch kept from forward to backward, one GEMM per product (a GEMM
        call per image would cost more than its arithmetic). Large ones: per image, columns in L2, recomputed."""
        rows, patch, _ = self._sizes()
        return rows * patch <= BATCHED_COLUMNS

    def _width(self) -> int:
        """Columns of the kept im2col matrix: the patch, the ones column, and for patches of fewer than
        SMALL_PATCH values (a first layer on 1-3 channels) zeros up to SMALL_PATCH (see backward)."""
        rows, patch, _ = self._sizes()
        return SMALL_PATCH if self.batched() and patch + 1 < SMALL_PATCH else patch + 1

    def kept_floats(self):
        rows, patch, _ = self._sizes()
        return rows * self._width() if self.batched() and not self._windows() else 0

    def _windows(self) -> tuple[int, int] | None:
        """conv1d on the whole batch with L = Lo * S (stride S: 20 -> 10 with k3 s2 pad 1, or any stride 1 'same'
        padding) and a patch of at least SMALL_PATCH - 1 values: output row i = n Lo + o reads the window that
        starts at value (i S - pad) C of the batch's flat input, a fixed step across signals, so the products read
        x in place and no im2col is made. Returns (o_a, o_b), the positions whose windows lie inside the signal
        (at least one), else None. cnn1d's second layer: im2col and its GEMMs took 41.6 us forward, 37.6 us for
        dW; in place 34.2 and 27.5 (float32, one core)."""
        H, L, C, KH, K, SH, S, PH, pad = self.geometry(self.in_shape)
        rows, patch, _ = self._sizes()
        if not self._fixed_step() or not self.batched() or patch + 1 < SMALL_PATCH:
            return None
        o_a, o_b = -(-pad // S), min(self.wo, (L + pad - K) // S + 1)
        return (o_a, o_b) if o_a < o_b else None

    def _fixed_step(self) -> bool:
        """conv1d (with IN_PLACE) whose windows sit at a fixed step across the batch: L = Lo * S."""
        H, L, C, KH, K, SH, S, PH, pad = self.geometry(self.in_shape)
        return self.dims == 2 and IN_PLACE and L == self.wo * S

    def _edge_taps(self, o: int) -> tuple[int, int, int]:
        """(p0, kk_lo, kk_hi): output position o's window starts at p0 = o S - pad; taps kk_lo <= kk < kk_hi fall
        inside the signal (none when kk_lo >= kk_hi)."""
        H, L, C, KH, K, SH, S, PH, pad = self.geometry(self.in_shape)
        p0 = o * S - pad
        return p0, max(0, -p0), min(K, L - p0)

    def scratch_floats(self):
        rows, patch, F = self._sizes()
        # one image's columns (per-image path); dW.T with the bias column, whose space later takes W.T (dx)
        return (0 if self.batched() else rows * (patch + 1)) + F * self._width()

    def _args(self):
        return ", ".join(str(a) for a in (*self.geometry(self.in_shape), self.ho, self.wo))

    def stores_relu(self):
        return True

    def gates_dx(self):
        return self._fixed_step() and self.batched()  # dx by phases (one store per value), not col2im's sums

    def _im2col_batch(self, arrays: str) -> str:
        """The im2col_batch call of `arrays` ("x, cols"): conv1d's own 1-D kernel, else the 2-D one."""
        if self.dims == 2:
            H, W, C, KH, KW, SH, SW, PH, PW = self.geometry(self.in_shape)
            return f"im2col_1d_batch({arrays}, {W}, {C}, {KW}, {SW}, {PW}, {self.wo})"
        return f"im2col_batch({arrays}, {self._args()})"

    # Columns are (rows, P + 1): im2col sets the last one to 1, so the weight-gradient GEMM dout.T @ cols also
    # sums dout per channel (the bias gradient) in the vector padding of its P columns; the other products use
    # cols[:, :P] (a strided view, which gemm takes as A and as C).
    def forward(self, v):
        R, P, F = self._sizes()
        t = v.tag
        relu = ", True" if v.relu else ""
        windows = self._windows()
        if windows is not None:
            H, L, C, KH, K, SH, S, PH, pad = self.geometry(self.in_shape)
            Lo, o_a = self.wo, windows[0]
            lines = [f"xf{t} = {v.x}.reshape(n * {L * C})", f"of{t} = {v.out}.reshape(n * {Lo * F})",
                     f"Wm{t} = {v.p['W']}.reshape({P}, {F})",
                     # rows o_a .. the last whose window ends inside the batch; edge rows are redone below
                     f"gemm_rows(xf{t}, {(o_a * S - pad) * C}, {S * C}, (n * {L} + {pad - K}) // {S} - {o_a - 1}, "
                     f"Wm{t}, of{t}, {o_a * F}, {F}, {v.p['b']}, True{relu})"]
            for o in range(Lo):
                p0, lo, hi = self._edge_taps(o)
                if lo == 0 and hi == K:
                    continue
                a0, block = ((p0 + lo) * C, f"Wm{t}[{lo * C}:{hi * C}]") if lo < hi else (0, f"Wm{t}[:0]")
                lines.append(f"gemm_rows(xf{t}, {a0}, {L * C}, n, {block}, of{t}, {o * F}, {Lo * F}, {v.p['b']}, "
                             f"True{relu})")
            return "\n".join(lines)
        if self.batched():
            Wc = self._width()
            return "\n".join([
                f"cols{t} = {v.kept}.reshape(n * {R}, {Wc})",
                self._im2col_batch(f"{v.x}, cols{t}"),
                f"gemm(cols{t}[:, :{P}], {v.p['W']}.reshape({P}, {F}), {v.out}.reshape(n * {R}, {F}), {v.p['b']}, 0, "
                f"True{relu})",
            ])
        return "\n".join([
            f"cols{t} = {v.scratch}[:{R * (P + 1)}].reshape({R}, {P + 1})",
            f"Wm{t} = {v.p['W']}.reshape({P}, {F})",
            "for i in range(n):",
            f"    im2col({v.x}, i, cols{t}, {self._args()})",
            f"    gemm(cols{t}[:, :{P}], Wm{t}, {v.out}[i].reshape({R}, {F}), {v.p['b']}, 0, True{relu})",
        ])

    def backward(self, v):
        # dW.T (F, P + 1) = dout.T (F, R) @ cols (R, P + 1): P + 1 (e.g. 148) is the GEMM's vector dimension,
        # where F (32) would leave a third of its 3-vector tiles masked off; then one split into dW and db. A small
        # patch (P + 1 < SMALL_PATCH, e.g. 5 + 1 for conv1d k5 on one channel) would fill 6 of 16 lanes: there
        # dW (SMALL_PATCH, F) = cols.T @ dout runs along F instead, over whole 8-row tiles (the zero columns
        # give zero rows), 2x faster.
        R, P, F = self._sizes()
        t = v.tag
        windows = self._windows()
        if windows is not None:
            # dW.T (F, P) = sum over o of dout[:, o].T (F, N) @ the windows at o (N, P): one product per output
            # position, accumulated in o order from the first window inside the signal; edge windows add to the
            # taps they have
            H, L, C, KH, K, SH, S, PH, pad = self.geometry(self.in_shape)
            Lo, (o_a, o_b) = self.wo, windows
            dWT = f"dWT{t}"

            def product(o, init):
                p0, lo, hi = self._edge_taps(o)
                cw = f"{dWT}[:, {lo * C}:{hi * C}]" if (lo, hi) != (0, K) else dWT
                return (f"gemm({v.dout}[:, {o * F}:{o * F + F}].T, {v.x}[:, {(p0 + lo) * C}:{(p0 + hi) * C}], {cw}, "
                        f"{cw}, {P}, {init})")
            lines = [f"{dWT} = {v.scratch}[:{F * P}].reshape({F}, {P})", product(o_a, False)]
            if o_b > o_a + 1:  # a loop in the step, not one line per position: long signals stay short source
                lines += [f"for o in range({o_a + 1}, {o_b}):",
                          f"    w0 = (o * {S} - {pad}) * {C}",
                          f"    gemm({v.dout}[:, o * {F}:o * {F} + {F}].T, {v.x}[:, w0:w0 + {P}], {dWT}, {dWT}, {P}, "
                          "True)"]
            for o in [*range(o_a), *range(o_b, Lo)]:
                p0, lo, hi = self._edge_taps(o)
                if lo < hi:
                    lines.append(product(o, True))
            lines += [f"bias_grad({v.dout}.reshape(n * {Lo}, {F}), {v.g['b']})",
                      f"transpose_into({dWT}, {v.g['W']}.reshape({P}, {F}))"]
            if v.need_dx:
                lines += self._phase_dx(v)
            return "\n".join(lines)
        if self.batched():
            Wc = self._width()
            lines = [f"cols{t} = {v.kept}.reshape(n * {R}, {Wc})"]
            if Wc > P + 1:
                lines += [
                    f"dWp{t} = {v.scratch}[:{Wc * F}].reshape({Wc}, {F})",
                    f"gemm(cols{t}.T, {v.dout}.reshape(n * {R}, {F}), dWp{t}, dWp{t}, 0, False)",
                    f"split_weight_rows(dWp{t}, {v.g['W']}.reshape({P}, {F}), {v.g['b']})",
                ]
            else:
                lines += [
                    f"dWT{t} = {v.scratch}[:{F * Wc}].reshape({F}, {Wc})",
                    f"gemm({v.dout}.reshape(n * {R}, {F}).T, cols{t}, dWT{t}, dWT{t}, 0, False)",
                    f"split_weight_grad(dWT{t}, {v.g['W']}.reshape({P}, {F}), {v.g['b']})",
                ]
            phases = self._phase_dx(v) if v.need_dx else None
            if phases is not None:
                lines += phases
            elif v.need_dx:
                lines += [
                    f"WT{t} = {v.scratch}[:{F * P}].reshape({F}, {P})",  # dW.T is stored: its space takes W.T
                    f"transpose_into({v.p['W']}.reshape({P}, {F}), WT{t})",
                    f"gemm({v.dout}.reshape(n * {R}, {F}), WT{t}, cols{t}[:, :{P}], cols{t}, 0, False)",  # dcols
                    f"col2im_batch(cols{t}, {v.dx}, {self._args()})",
                ]
            return "\n".join(lines)
        C1 = R * (P + 1)
        lines = [
            f"cols{t} = {v.scratch}[:{C1}].reshape({R}, {P + 1})",
            f"Wm{t} = {v.p['W']}.reshape({P}, {F})",
            f"dWT{t} = {v.scratch}[{C1}:{C1 + F * (P + 1)}].reshape({F}, {P + 1})",
            "for i in range(n):",
            f"    im2col({v.x}, i, cols{t}, {self._args()})",
            f"    gemm({v.dout}[i].reshape({R}, {F}).T, cols{t}, dWT{t}, dWT{t}, {P + 1}, i > 0)",
            f"split_weight_grad(dWT{t}, {v.g['W']}.reshape({P}, {F}), {v.g['b']})",
        ]
        if v.need_dx:
            lines += [
                f"WT{t} = {v.scratch}[{C1}:{C1 + F * P}].reshape({F}, {P})",  # dW.T is stored: its space takes W.T
                f"transpose_into(Wm{t}, WT{t})",
                "for i in range(n):",
                f"    gemm({v.dout}[i].reshape({R}, {F}), WT{t}, cols{t}[:, :{P}], cols{t}, 0, False)",
                f"    col2im(cols{t}, {v.dx}, i, {self._args()})",
            ]
        return "\n".join(lines)

    def _phase_dx(self, v) -> list[str] | None:
        """conv1d's dx without dcols and col2im, when L = Lo * S (stride S; e.g. 20 -> 10 with k3 s2 pad 1):
        positions p = q S + r - pad of one phase r take dout at o = q - j through tap r + j S, so with the J taps
        of the phase stacked last first (stack_taps), dx[n, p] = dout[n, q-J+1 .. q] (J F contiguous values) @ B_r.
        Rows of A are overlapping windows of dout and rows of C every S-th position of dx, both at a fixed step
        across the whole batch (L = Lo S): one gemm_rows per phase. It also fills the few positions whose windows
        cross a signal's edge (garbage from the neighbouring signal), which one gemm_rows per such q then
        overwrites from the taps that exist (none: zeros). Every position is written once and there is no col2im
        pass (cnn1d's second layer: the (N Lo, 25) @ (25, 75) dcols product and col2im took 46 us, the phases 34
        us). None when the shapes do not allow it."""
        if not self._fixed_step():
            return None
        H, L, C, KH, K, SH, S, PH, pad = self.geometry(self.in_shape)
        Lo, F, t = self.wo, self.cfg.filters, v.tag
        lines = [f"Wk{t} = {v.p['W']}.reshape({K}, {C}, {F})", f"dof{t} = {v.dout}.reshape(n * {Lo * F})",
                 f"dxf{t} = {v.dx}.reshape(n * {L * C})"]
        gate = f", False, {v.gate}.reshape(n * {L * C})" if v.gate else ""  # the ReLU before: dx where x > 0
        for r in range(S):
            J = len(range(r, K, S))  # taps r, r + S, ... of this phase
            q_lo = -((r - pad) // S)  # first q with p = q S + r - pad >= 0; Lo values of q per signal
            c0 = (q_lo * S + r - pad) * C
            i_min = max(0, J - 1 - q_lo)  # rows before this would read before dout
            B = f"B{t}_{r}"
            lines += [f"{B} = {v.scratch}[:{J * F * C}].reshape({J * F}, {C})",
                      f"stack_taps(Wk{t}, {B}, {r}, {S}, {J})",
                      f"gemm_rows(dof{t}, {(i_min + q_lo - J + 1) * F}, {F}, n * {Lo} - {i_min + q_lo}, {B}, dxf{t}, "
                      f"{c0 + i_min * S * C}, {S * C}, dxf{t}, False{gate})"]
            for q in range(q_lo, q_lo + Lo):
                if q - J + 1 >= 0 and q <= Lo - 1:
                    continue  # all J windows inside the signal: done by the phase's product
                j_lo, j_hi = max(0, q - Lo + 1), min(J - 1, q)  # taps whose o = q - j exists
                b0, b1 = J - 1 - j_hi, J - 1 - j_lo
                a0, block = ((q - j_hi) * F, f"{B}[{b0 * F}:{(b1 + 1) * F}]") if b0 <= b1 else (0, f"{B}[:0]")
                lines.append(f"gemm_rows(dof{t}, {a0}, {Lo * F}, n, {block}, dxf{t}, {(q * S + r - pad) * C}, "
                             f"{L * C}, dxf{t}, False{gate})")
        return lines


@LAYERS.register("conv2d", config=ConvConfig)
class Conv2d(_Conv):
    """2-D convolution: x (N, H, W, C) * W (K, K, C, F) + b (F,) -> (N, Ho, Wo, F), Ho = (H + 2 pad - K) // stride
    + 1; im2col per image and the project's GEMM."""

    dims = 3

    def geometry(self, in_shape):
        H, W, C = in_shape
        k, s, p = self.cfg.size, self.cfg.stride, self.cfg.pad
        return H, W, C, k, k, s, s, p, p


@LAYERS.register("conv1d", config=ConvConfig)
class Conv1d(_Conv):
    """1-D convolution: x (N, L, C) * W (1, K, C, F) + b (F,) -> (N, Lo, F), Lo = (L + 2 pad - K) // stride + 1."""

    dims = 2

    def geometry(self, in_shape):
        L, C = in_shape
        return 1, L, C, 1, self.cfg.size, 1, self.cfg.stride, 0, self.cfg.pad


# ---------------------------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PoolConfig:
    size: int = param(2, "window side K (K x K for 2-D inputs, K for 1-D)", range="[1, inf)")
    stride: int = param(0, "step between windows; 0 = size (windows that do not overlap)", range="[0, inf)")


@dataclass
class AvgPoolConfig:
    size: int = param(0, "window side K (K x K on images, K on signals); 0 = the whole input (global average)",
                      range="[0, inf)")
    stride: int = param(0, "step between windows; 0 = size", range="[0, inf)")


class _Pool(Layer):
    dims = None  # 3: images only, 2: signals only, None: either

    def output_shape(self, in_shape, num_classes, where):
        if len(in_shape) not in (2, 3) or (self.dims and len(in_shape) != self.dims):
            want = {3: "(C, H, W) images", 2: "(C, L) signals", None: "images or signals"}[self.dims]
            raise ConfigError(where, self.name, f"a layer for its input: {self.name} takes {want}, this input is "
                                                f"{describe_shape(in_shape)}")
        H, W, C = (in_shape if len(in_shape) == 3 else (1, *in_shape))
        k = self.cfg.size
        KH, KW = (H if len(in_shape) == 3 else 1, W) if k == 0 else (k if len(in_shape) == 3 else 1, k)
        s = self.cfg.stride or k
        SH, SW = (KH, KW) if s == 0 else (s if len(in_shape) == 3 else 1, s)
        if KH > H or KW > W:
            raise ConfigError(f"{where}.size", k, f"a window no larger than the input {describe_shape(in_shape)}")
        self.geom = (H, W, C, KH, KW, SH, SW, (H - KH) // SH + 1, (W - KW) // SW + 1)
        ho, wo = self.geom[7], self.geom[8]
        return (ho, wo, C) if len(in_shape) == 3 else (wo, C)

    def _args(self):
        return ", ".join(str(a) for a in self.geom)


class _MaxPool(_Pool):
    """Max pooling: the max of each window per channel; the winner's index is kept for the backward pass."""

    kernels = (KP.maxpool_forward, KP.maxpool_backward, KP.maxpool_backward_tiled)
    kinks = True

    def ints_per_row(self):
        return self.out_size

    def forward(self, v):
        return f"maxpool_forward({v.x}, {v.out}, {v.ints}, {self._args()})"

    def backward(self, v):
        H, W, C, KH, KW, SH, SW, Ho, Wo = self.geom
        if (SH, SW) == (KH, KW):  # windows tile the input: one write per input, no zeroing pass or scatter
            return f"maxpool_backward_tiled({v.dout}, {v.ints}, {v.dx}, {self._args()})"
        return f"maxpool_backward({v.dout}, {v.ints}, {v.dx})"

    def winners(self, x, out, ints):
        return ints.ravel() % max(1, self.in_size)  # which input won each window (an index, compared exactly)


@LAYERS.register("maxpool2d", config=PoolConfig)
class MaxPool2d(_MaxPool):
    """2-D max pooling: (N, H, W, C) -> (N, Ho, Wo, C), Ho = (H - K) // stride + 1."""

    dims = 3


@LAYERS.register("maxpool1d", config=PoolConfig)
class MaxPool1d(_MaxPool):
    """1-D max pooling: (N, L, C) -> (N, Lo, C), Lo = (L - K) // stride + 1."""

    dims = 2


@LAYERS.register("avgpool", config=AvgPoolConfig)
class AvgPool(_Pool):
    """Average pooling over images or signals: the mean of each window per channel (size 0: global average)."""

    kernels = (KP.avgpool_forward, KP.avgpool_backward)

    def forward(self, v):
        return f"avgpool_forward({v.x}, {v.out}, {self._args()})"

    def backward(self, v):
        return f"avgpool_backward({v.dout}, {v.dx}, {self._args()})"


# ---------------------------------------------------------------------------------------------------------------
# reshapes, activations, dropout
# ---------------------------------------------------------------------------------------------------------------
@LAYERS.register("flatten")
class Flatten(Layer):
    """(N, ...) -> (N, D): the same buffer (rows are already flat, channels last); no kernels, no copy."""

    alias = True
    threadable = True

    def output_shape(self, in_shape, num_classes, where):
        return (int(np.prod(in_shape)),)

    def forward(self, v):
        return ""

    def backward(self, v):
        return ""


@LAYERS.register("relu")
class ReLU(Layer):
    """out = max(0, x) elementwise; kink at 0 (the sign of x is the winners record)."""

    kernels = (KE.relu_inplace, KE.relu_backward_inplace)
    threadable = True
    inplace = True
    kind = "relu"
    kinks = True

    def forward(self, v):
        return f"relu_inplace({v.out})"

    def backward(self, v):
        return f"relu_backward_inplace({v.dout}, {v.out})"

    def winners(self, x, out, ints):
        return (x > 0).ravel()


@dataclass
class LeakyReLUConfig:
    slope: float = param(0.01, "slope for x < 0", range="(0, 1)")


@LAYERS.register("leaky_relu", config=LeakyReLUConfig)
class LeakyReLU(Layer):
    """out = x for x > 0, slope * x otherwise; kink at 0."""

    kernels = (KE.leaky_relu_inplace, KE.leaky_relu_backward_inplace)
    threadable = True
    inplace = True
    kind = "leaky_relu"
    kinks = True

    def forward(self, v):
        return f"leaky_relu_inplace({v.out}, {float(self.cfg.slope)!r})"

    def backward(self, v):
        return f"leaky_relu_backward_inplace({v.dout}, {v.out}, {float(self.cfg.slope)!r})"

    def winners(self, x, out, ints):
        return (x > 0).ravel()


@LAYERS.register("tanh")
class Tanh(Layer):
    """out = tanh(x) elementwise (smooth: no kinks)."""

    kernels = (KE.tanh_inplace, KE.tanh_backward_inplace)
    threadable = True
    inplace = True
    kind = "tanh"

    def forward(self, v):
        return f"tanh_inplace({v.out})"

    def backward(self, v):
        return f"tanh_backward_inplace({v.dout}, {v.out})"


@dataclass
class DropoutConfig:
    keep_prob: float = param(0.5, "probability p of keeping a unit (inverted dropout: kept units scale by 1/p)",
                             range="(0, 1]")


@LAYERS.register("dropout", config=DropoutConfig)
class Dropout(Layer):
    """Inverted dropout: out = x * mask, mask 1/p with probability p else 0, drawn per training step; identity in
    eval mode (and in fused steps, which the model turns off when it has dropout)."""

    kernels = (KE.scale_by_mask,)
    threadable = True

    def noise_per_row(self):
        return self.in_size if self.cfg.keep_prob < 1.0 else 0

    def make_mask(self, uniform):
        KE.uniform_to_mask(uniform, self.cfg.keep_prob)

    def forward(self, v):
        return f"scale_by_mask({v.x}, {v.mask}, {v.out})"

    def backward(self, v):
        return f"scale_by_mask({v.dout}, {v.mask}, {v.dx})"


# ---------------------------------------------------------------------------------------------------------------
# batch normalization
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class BatchNormConfig:
    momentum: float = param(0.9, "running statistics: running = momentum * running + (1 - momentum) * batch",
                            range="[0, 1)")
    eps: float = param(1e-5, "added to the variance before the square root", range="(0, inf)")


@LAYERS.register("batchnorm", config=BatchNormConfig)
class BatchNorm(Layer):
    """Batch normalization per channel (last axis): 1-D on features (N, D), spatial on images and signals.
    Training steps normalize with the batch's statistics and update the running ones, which eval uses. The
    running mean and variance are blocks of the parameter vector (mean{k}, var{k}; no decay, zero gradient, so
    checkpoints and resumes carry them bit for bit and EMA averages them)."""

    kernels = (KN.batchnorm_forward, KN.batchnorm_backward, KN.channel_stats)

    def blocks(self):
        C = self.in_shape[-1]
        return [("gamma", (C,), False), ("beta", (C,), False), ("mean", (C,), False), ("var", (C,), False)]

    def init(self, rng, views, small):
        views["gamma"][:] = 1.0
        views["var"][:] = 1.0

    def forward(self, v):
        C = self.in_shape[-1]
        return (f"batchnorm_forward({v.x}, {v.out}, {v.p['gamma']}, {v.p['beta']}, {v.p['mean']}, {v.p['var']}, "
                f"{C}, {float(self.cfg.eps)!r}, {float(self.cfg.momentum)!r}, train)")

    def backward(self, v):
        C = self.in_shape[-1]
        dx = v.dx if v.need_dx else v.dout
        return "\n".join([
            f"batchnorm_backward({v.dout}, {v.x}, {v.p['gamma']}, {dx}, {v.g['gamma']}, {v.g['beta']}, {C}, "
            f"{float(self.cfg.eps)!r}, {v.need_dx})",
            f"{v.g['mean']}[:] = 0.0",
            f"{v.g['var']}[:] = 0.0",
        ])
