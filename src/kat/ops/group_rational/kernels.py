"""Triton kernels for the group-rational function (forward and backward), orders (m, n) <= (5, 4).

Both kernels see the input as a 2-D matrix of shape (S, CA): a "stream" axis S and a "channel axis"
CA whose index ``ca`` belongs to channel ``ca % C``. Channels-last tensors are (rows, C) with CA = C;
channels-first (B, C, L) tensors are (L, B*C) with the stream axis contiguous. The kernels only see
strides, so one pair covers both layouts and any 2-D-collapsible view.

All arithmetic is float32; loads are upcast and stores round to the output pointer's dtype.
Coefficients are loaded per column (a gather by group) or, where the host passes UNIFORM (the
block width divides the group size, so a program's columns share one group), once per program as
scalars: on sm_90 the default backward tile then takes 96 registers per thread instead of 185
(bf16, scripts/kernel_sass.py), so more warps, and more loads, are in flight per SM.
Lower orders run here by zero-padding the coefficients on the host (a zero numerator term adds
nothing to P, a zero denominator term adds nothing to Q).

The backward kernel is persistent along the stream axis: program (p, k) walks stream tiles
p, p + P, p + 2P, ... of channel block k (loading tile i + 2P while computing tile i, or, in the
STAGES configs, letting Triton's pipeliner stream the tiles through shared memory; P is chosen on
the host so that all programs fit on the GPU at once, from the compiled kernel's registers), accumulates
the ten coefficient-gradient terms in fp32 registers and writes one partial per channel-axis
element to ``partial[p, ca, :]`` (denominator terms already multiplied by sign(b)). Two small
kernels at the end of this file sum the partials per group in a fixed order (fixed grid and tiles
per shape), so coefficient gradients are bitwise reproducible (no atomics).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from .configs import GPU_BWD_CONFIGS, GPU_FWD_CONFIGS  # the candidate tiles (no Triton there)

NUM_ACC = 10  # d/da_0..a_5 and d/d|b_1|..|b_4|

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The interpreter is for correctness on the CPU, where timing means nothing: the first config is
# the one used; tests run the others explicitly (both accumulator schemes of the backward).
FWD_CONFIGS = [(64, 64, 4, False), (32, 64, 4, True)] if INTERPRET else GPU_FWD_CONFIGS
BWD_CONFIGS = [(32, 64, 4, True), (16, 64, 4, False)] if INTERPRET else GPU_BWD_CONFIGS


@triton.jit
def _load_coefficients(a_ptr, b_ptr, ca, mask_c, C, GROUP_SIZE, a_group_stride):
    """Per-channel coefficient rows (as [1, BLOCK_C] vectors) for channel-axis indices ``ca``."""
    grp = (ca % C) // GROUP_SIZE
    a_row = a_ptr + grp * a_group_stride
    b_row = b_ptr + grp * 4
    a0 = tl.load(a_row + 0, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    a1 = tl.load(a_row + 1, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    a2 = tl.load(a_row + 2, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    a3 = tl.load(a_row + 3, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    a4 = tl.load(a_row + 4, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    a5 = tl.load(a_row + 5, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    b1 = tl.load(b_row + 0, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    b2 = tl.load(b_row + 1, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    b3 = tl.load(b_row + 2, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    b4 = tl.load(b_row + 3, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    return a0, a1, a2, a3, a4, a5, b1, b2, b3, b4  # b signed: callers take |b|


@triton.jit
def _load_group_coefficients(a_ptr, b_ptr, col0, C, GROUP_SIZE, a_group_stride):
    """The coefficients as scalars, for a program whose channel-axis block starting at ``col0`` lies
    in one group (the host passes UNIFORM when the block width divides the group size): one load
    each per program, and one register each instead of one per column a thread handles."""
    grp = (col0 % C) // GROUP_SIZE
    a_row = a_ptr + grp * a_group_stride
    b_row = b_ptr + grp * 4
    return (tl.load(a_row + 0), tl.load(a_row + 1), tl.load(a_row + 2), tl.load(a_row + 3),
            tl.load(a_row + 4), tl.load(a_row + 5),
            tl.load(b_row + 0), tl.load(b_row + 1), tl.load(b_row + 2), tl.load(b_row + 3))


@triton.jit
def _block_coefficients(a_ptr, b_ptr, pid_c, ca, mask_c, C, GROUP_SIZE, a_group_stride,
                        BLOCK_C: tl.constexpr, UNIFORM: tl.constexpr):
    """The signed coefficients for channel-axis block ``pid_c``: scalars when UNIFORM, else rows."""
    if UNIFORM:
        return _load_group_coefficients(a_ptr, b_ptr, pid_c * BLOCK_C, C, GROUP_SIZE, a_group_stride)
    else:
        return _load_coefficients(a_ptr, b_ptr, ca, mask_c, C, GROUP_SIZE, a_group_stride)


# On the GPU the reciprocal of Q is one MUFU.RCP instruction (PTX rcp.approx.ftz.f32, at most
# 1 ulp off). Q = 1 + sum |b_j| |x|^j is never below 1 (or NaN for NaN x, +inf on overflow, where
# rcp gives NaN and +0 as division would), so the range fix-ups that tl.fdiv's div.full.f32
# compiles to (two compares, a select and up to three multiplies per element) are never needed.
# The interpreter cannot run PTX and divides instead.
_PTX: tl.constexpr = tl.constexpr(not INTERPRET)


@triton.jit
def _rcp_q(q):
    """1 / q for q >= 1, +inf or NaN."""
    if _PTX:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [q], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.fdiv(tl.full(q.shape, 1.0, tl.float32), q)


@triton.jit
def _pq(x, ax, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4):
    """P(x) and Q(x) by Horner's rule (b already |b|): the direct form, fp32."""
    p = a5 * x + a4
    p = p * x + a3
    p = p * x + a2
    p = p * x + a1
    p = p * x + a0
    q = b4 * ax + b3
    q = q * ax + b2
    q = q * ax + b1
    q = q * ax + 1.0
    return p, q


@triton.jit
def group_rational_fwd_kernel(
    x_ptr, y_ptr, a_ptr, b_ptr,
    S, CA, C, GROUP_SIZE, a_group_stride,
    stride_xs, stride_xc, stride_ys, stride_yc,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, SELECT: tl.constexpr, UNIFORM: tl.constexpr,
    COLS_FIRST: tl.constexpr,
):
    if COLS_FIRST:
        # grid (column blocks, row blocks): the programs that run at the same time cover whole rows
        # (contiguous memory) rather than one column strip of many rows
        pid_c = tl.program_id(0)
        pid_s = tl.program_id(1)
    else:
        pid_s = tl.program_id(0)
        pid_c = tl.program_id(1)
    ca = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = ca < CA
    a0, a1, a2, a3, a4, a5, b1, b2, b3, b4 = _block_coefficients(
        a_ptr, b_ptr, pid_c, ca, mask_c, C, GROUP_SIZE, a_group_stride, BLOCK_C, UNIFORM)
    b1, b2, b3, b4 = tl.abs(b1), tl.abs(b2), tl.abs(b3), tl.abs(b4)

    s = (pid_s * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    mask = (s < S)[:, None] & mask_c[None, :]
    cal = ca.to(tl.int64)[None, :]
    x = tl.load(x_ptr + s[:, None] * stride_xs + cal * stride_xc, mask=mask, other=0.0).to(tl.float32)
    ax = tl.abs(x)
    p, q = _pq(x, ax, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
    y = p * _rcp_q(q)  # <= 2 ulp, like div.full.f32, in two instructions
    # Far from 0 (|x| > ~4e7 with a nonzero x^5 term) P or Q overflows fp32 although P/Q is moderate.
    # There, evaluate the same function with P and Q divided by x^4 (_scaled_form).
    y_ptrs = y_ptr + s[:, None] * stride_ys + cal * stride_yc
    if SELECT:
        # Both forms for every element, chosen element-wise: more arithmetic, no tile-wide test.
        overflowed = (tl.abs(p) == float("inf")) | (q == float("inf"))  # finite x cannot make them NaN
        scaled = overflowed & (ax < float("inf"))  # NaN/Inf inputs keep the direct form's NaN/Inf
        y = tl.where(scaled, _scaled_form(x, scaled, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4), y)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        # One add and one max per element: a tile where |P| + Q reaches +inf (or NaN, should the
        # max propagate a NaN input's NaN) may hold overflowed elements, and the fix-up finds them
        # exactly; tiles without any (all but a few in practice) skip it.
        big = tl.max(tl.max(tl.abs(p) + q, axis=1), axis=0)
        if (big == float("inf")) | (big != big):
            # Rare: only tiles with such elements get here, and they overwrite those elements, one
            # row at a time (registers are allocated for the kernel's peak, so a whole-tile branch
            # would cost every tile occupancy; a row is small). Rows and coefficients are reloaded.
            _fwd_scaled_fixup(x_ptr, y_ptr, a_ptr, b_ptr, pid_s * BLOCK_S, S, cal, ca, mask_c, C,
                              GROUP_SIZE, a_group_stride, stride_xs, stride_xc, stride_ys, stride_yc,
                              BLOCK_S)


@triton.jit
def _scaled_form(x, scaled, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4):
    """P/Q as (P/x^4) / (Q/x^4) with v = 1/x, where ``scaled`` (elsewhere 2.0 stands in for x):
    P/x^4 = a5 x + a4 + v (a3 + v (a2 + v (a1 + v a0))),  Q/x^4 = |b4| + |v| (|b3| + |v| (|b2| + |v| (|b1| + |v|)))."""
    xs = tl.where(scaled, x, 2.0)
    v = tl.fdiv(tl.full(xs.shape, 1.0, tl.float32), xs)
    av = tl.abs(v)
    ps = a5 * xs + (a4 + v * (a3 + v * (a2 + v * (a1 + v * a0))))
    qs = b4 + av * (b3 + av * (b2 + av * (b1 + av)))
    return tl.fdiv(ps, qs)


@triton.jit
def _fwd_scaled_fixup(x_ptr, y_ptr, a_ptr, b_ptr, row0, S, cal, ca, mask_c, C, GROUP_SIZE,
                      a_group_stride, stride_xs, stride_xc, stride_ys, stride_yc, BLOCK_S: tl.constexpr):
    a0, a1, a2, a3, a4, a5, b1, b2, b3, b4 = _load_coefficients(
        a_ptr, b_ptr, ca, mask_c, C, GROUP_SIZE, a_group_stride)
    b1, b2, b3, b4 = tl.abs(b1), tl.abs(b2), tl.abs(b3), tl.abs(b4)
    for r in range(BLOCK_S):
        row = (row0 + r).to(tl.int64)
        mask = mask_c[None, :] & (row < S)
        x = tl.load(x_ptr + row * stride_xs + cal * stride_xc, mask=mask, other=0.0).to(tl.float32)
        ax = tl.abs(x)
        p, q = _pq(x, ax, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
        scaled = ((tl.abs(p) == float("inf")) | (q == float("inf"))) & (ax < float("inf"))
        tl.store(y_ptr + row * stride_ys + cal * stride_yc,
                 _scaled_form(x, scaled, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4).to(y_ptr.dtype.element_ty),
                 mask=mask & scaled)


@triton.jit
def _grad_terms(x, go, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4):
    """For y = P(x)/Q(x) (b already |b|) and upstream gradient go: (dL/dx, r = go/Q, f = P/Q, |x|,
    x^2, x^3, x^4, x^5), the pieces the coefficient gradients are built from."""
    ax = tl.abs(x)
    x2 = x * x
    x3 = x2 * x
    x4 = x2 * x2
    x5 = x4 * x
    p, q = _pq(x, ax, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
    dp = 5.0 * a5 * x + 4.0 * a4
    dp = dp * x + 3.0 * a3
    dp = dp * x + 2.0 * a2
    dp = dp * x + a1
    dq = 4.0 * b4 * ax + 3.0 * b3
    dq = dq * ax + 2.0 * b2
    dq = dq * ax + b1
    # d|x|/dx = sign(x) with sign(0) = +1, the official kernels' convention
    dq = tl.where(x < 0, -dq, dq)
    inv_q = _rcp_q(q)
    f = p * inv_q
    r = go * inv_q
    return r * (dp - f * dq), r, f, ax, x2, x3, x4, x5


@triton.jit
def _accumulate(acc, v, ROW_REDUCE: tl.constexpr, FOLD: tl.constexpr):
    """acc += v, or acc += v summed over the tile's rows (acc is then [1, BLOCK_C]), or (FOLD > 1)
    acc += v with each run of FOLD neighbouring columns summed (acc is then [BLOCK_S, BLOCK_C //
    FOLD]): where a block's columns share one group their terms are summed anyway, and a run of
    FOLD columns is what one thread holds, so the fold is a thread's own adds and the thread keeps
    one accumulator per term instead of FOLD."""
    if ROW_REDUCE:
        return acc + tl.sum(v, axis=0, keep_dims=True)
    elif FOLD > 1:
        return acc + tl.sum(tl.reshape(v, [v.shape[0], v.shape[1] // FOLD, FOLD]), axis=2)
    else:
        return acc + v


@triton.jit
def _tile_backward(x, go, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4,
                   acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5, acc_b1, acc_b2, acc_b3, acc_b4,
                   ROW_REDUCE: tl.constexpr, FOLD: tl.constexpr):
    """One tile of the backward: dL/dx, and the ten coefficient-gradient terms added to the
    accumulators (denominator terms before sign(b), applied once at the end)."""
    gx, r, f, ax, x2, x3, x4, x5 = _grad_terms(x, go, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
    acc_a0 = _accumulate(acc_a0, r, ROW_REDUCE, FOLD)
    acc_a1 = _accumulate(acc_a1, r * x, ROW_REDUCE, FOLD)
    acc_a2 = _accumulate(acc_a2, r * x2, ROW_REDUCE, FOLD)
    acc_a3 = _accumulate(acc_a3, r * x3, ROW_REDUCE, FOLD)
    acc_a4 = _accumulate(acc_a4, r * x4, ROW_REDUCE, FOLD)
    acc_a5 = _accumulate(acc_a5, r * x5, ROW_REDUCE, FOLD)
    t = -r * f
    acc_b1 = _accumulate(acc_b1, t * ax, ROW_REDUCE, FOLD)
    acc_b2 = _accumulate(acc_b2, t * x2, ROW_REDUCE, FOLD)
    acc_b3 = _accumulate(acc_b3, t * tl.abs(x3), ROW_REDUCE, FOLD)
    acc_b4 = _accumulate(acc_b4, t * x4, ROW_REDUCE, FOLD)
    return gx, acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5, acc_b1, acc_b2, acc_b3, acc_b4


@triton.jit
def group_rational_bwd_kernel(
    x_ptr, go_ptr, gx_ptr, a_ptr, b_ptr, partial_ptr,
    S, CA, C, GROUP_SIZE, a_group_stride, NUM_SPLITS,
    stride_xs, stride_xc, stride_gs, stride_gc, stride_dxs, stride_dxc,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ROW_REDUCE: tl.constexpr, ACC_ROWS: tl.constexpr,
    UNIFORM: tl.constexpr, STAGES: tl.constexpr, FOLD: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    ca = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = ca < CA
    a0, a1, a2, a3, a4, a5, sb1, sb2, sb3, sb4 = _block_coefficients(
        a_ptr, b_ptr, pid_c, ca, mask_c, C, GROUP_SIZE, a_group_stride, BLOCK_C, UNIFORM)
    b1, b2, b3, b4 = tl.abs(sb1), tl.abs(sb2), tl.abs(sb3), tl.abs(sb4)
    cal = ca.to(tl.int64)[None, :]
    col_x = cal * stride_xc
    col_g = cal * stride_gc
    col_d = cal * stride_dxc

    # ROW_REDUCE: fold each tile's rows into [1, BLOCK_C] accumulators (ACC_ROWS = 1: 10 registers
    # per column instead of 10 per element in flight, so taller tiles fit); otherwise ACC_ROWS =
    # BLOCK_S and the rows are reduced once at the end.
    acc_a0 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_a1 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_a2 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_a3 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_a4 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_a5 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_b1 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_b2 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_b3 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_b4 = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)

    rows = tl.arange(0, BLOCK_S)
    num_tiles = tl.cdiv(S, BLOCK_S)
    if STAGES > 0:
        # Triton's software pipeliner: on sm_80+ the loads of the next STAGES - 1 tiles are issued
        # as asynchronous copies into shared memory while this tile is computed, so the bytes in
        # flight grow with STAGES without holding them in registers (the manual prefetch below
        # holds two tiles in registers). The interpreter ignores num_stages.
        for tile in tl.range(pid_s, num_tiles, NUM_SPLITS, num_stages=STAGES):
            s = tile * BLOCK_S + rows
            mask = (s < S)[:, None] & mask_c[None, :]
            s64 = s.to(tl.int64)[:, None]
            x = tl.load(x_ptr + s64 * stride_xs + col_x, mask=mask, other=0.0).to(tl.float32)
            go = tl.load(go_ptr + s64 * stride_gs + col_g, mask=mask, other=0.0).to(tl.float32)
            gx, acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5, acc_b1, acc_b2, acc_b3, acc_b4 = _tile_backward(
                x, go, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4,
                acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5, acc_b1, acc_b2, acc_b3, acc_b4, ROW_REDUCE, FOLD)
            tl.store(gx_ptr + s64 * stride_dxs + col_d, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    else:
        # Software prefetch: loads run two tiles ahead of the arithmetic (tile i + 2P is requested
        # while tile i is computed), so their latency overlaps it; against one tile ahead that costs
        # a few registers per thread (sm_90, bf16, uniform: 90 -> 96) and doubles the bytes in flight
        # per SM for a kernel that otherwise waits on memory latency. The pointer tiles advance by a
        # fixed number of rows per iteration: one 64-bit add each instead of row x stride products.
        step_rows = NUM_SPLITS * BLOCK_S
        s = pid_s * BLOCK_S + rows
        mask = (s < S)[:, None] & mask_c[None, :]
        s64 = s.to(tl.int64)[:, None]
        x_ptrs = x_ptr + s64 * stride_xs + col_x
        go_ptrs = go_ptr + s64 * stride_gs + col_g
        gx_ptrs = gx_ptr + s64 * stride_dxs + col_d
        step = step_rows.to(tl.int64)
        step_x = step * stride_xs
        step_g = step * stride_gs
        step_d = step * stride_dxs
        x_next = tl.load(x_ptrs, mask=mask, other=0.0)
        go_next = tl.load(go_ptrs, mask=mask, other=0.0)
        s_ahead = s + step_rows
        mask_ahead = (s_ahead < S)[:, None] & mask_c[None, :]
        x_ptrs += step_x
        go_ptrs += step_g
        x_ahead = tl.load(x_ptrs, mask=mask_ahead, other=0.0)
        go_ahead = tl.load(go_ptrs, mask=mask_ahead, other=0.0)
        for tile in range(pid_s, num_tiles, NUM_SPLITS):
            x = x_next.to(tl.float32)
            go = go_next.to(tl.float32)
            mask_here = mask
            x_next, go_next, mask = x_ahead, go_ahead, mask_ahead
            s_ahead += step_rows
            mask_ahead = (s_ahead < S)[:, None] & mask_c[None, :]
            x_ptrs += step_x
            go_ptrs += step_g
            x_ahead = tl.load(x_ptrs, mask=mask_ahead, other=0.0)
            go_ahead = tl.load(go_ptrs, mask=mask_ahead, other=0.0)
            gx, acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5, acc_b1, acc_b2, acc_b3, acc_b4 = _tile_backward(
                x, go, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4,
                acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5, acc_b1, acc_b2, acc_b3, acc_b4, ROW_REDUCE, FOLD)
            tl.store(gx_ptrs, gx.to(gx_ptr.dtype.element_ty), mask=mask_here)
            gx_ptrs += step_d

    # d|b|/db = sign(b), +1 at 0 (the official kernels' convention)
    s1, s2 = tl.where(sb1 < 0, -1.0, 1.0), tl.where(sb2 < 0, -1.0, 1.0)
    s3, s4 = tl.where(sb3 < 0, -1.0, 1.0), tl.where(sb4 < 0, -1.0, 1.0)
    if FOLD > 1:
        # UNIFORM with folded accumulators: the block's ten sums, partial[pid_s, pid_c, 0:10]
        out = partial_ptr + (pid_s.to(tl.int64) * (CA // BLOCK_C) + pid_c) * 10
        tl.store(out + 0, tl.sum(tl.sum(acc_a0, axis=1), axis=0))
        tl.store(out + 1, tl.sum(tl.sum(acc_a1, axis=1), axis=0))
        tl.store(out + 2, tl.sum(tl.sum(acc_a2, axis=1), axis=0))
        tl.store(out + 3, tl.sum(tl.sum(acc_a3, axis=1), axis=0))
        tl.store(out + 4, tl.sum(tl.sum(acc_a4, axis=1), axis=0))
        tl.store(out + 5, tl.sum(tl.sum(acc_a5, axis=1), axis=0))
        tl.store(out + 6, tl.sum(tl.sum(acc_b1, axis=1), axis=0) * s1)
        tl.store(out + 7, tl.sum(tl.sum(acc_b2, axis=1), axis=0) * s2)
        tl.store(out + 8, tl.sum(tl.sum(acc_b3, axis=1), axis=0) * s3)
        tl.store(out + 9, tl.sum(tl.sum(acc_b4, axis=1), axis=0) * s4)
    else:
        out = partial_ptr + (pid_s.to(tl.int64) * CA + ca.to(tl.int64)) * 10
        tl.store(out + 0, tl.sum(acc_a0, axis=0), mask=mask_c)
        tl.store(out + 1, tl.sum(acc_a1, axis=0), mask=mask_c)
        tl.store(out + 2, tl.sum(acc_a2, axis=0), mask=mask_c)
        tl.store(out + 3, tl.sum(acc_a3, axis=0), mask=mask_c)
        tl.store(out + 4, tl.sum(acc_a4, axis=0), mask=mask_c)
        tl.store(out + 5, tl.sum(acc_a5, axis=0), mask=mask_c)
        if not UNIFORM:  # per-column [1, BLOCK_C] rows; scalars otherwise
            s1, s2, s3, s4 = s1.reshape([BLOCK_C]), s2.reshape([BLOCK_C]), s3.reshape([BLOCK_C]), s4.reshape([BLOCK_C])
        tl.store(out + 6, tl.sum(acc_b1, axis=0) * s1, mask=mask_c)
        tl.store(out + 7, tl.sum(acc_b2, axis=0) * s2, mask=mask_c)
        tl.store(out + 8, tl.sum(acc_b3, axis=0) * s3, mask=mask_c)
        tl.store(out + 9, tl.sum(acc_b4, axis=0) * s4, mask=mask_c)


def compile_signature(kernel, dtype: str) -> dict:
    """Triton signature to compile ``kernel`` ahead of time (tests/ops/test_kernel_build.py,
    scripts/kernel_regs.py): data pointers in ``dtype`` ("fp32"/"bf16"/"fp16"), coefficient and
    partial-sum pointers fp32, the reduction's counter i32, integers i32, constexprs as such."""
    sig = {}
    for p in kernel.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = ("*" + dtype if p.name in ("x_ptr", "y_ptr", "go_ptr", "gx_ptr", "gy_ptr")
                           else "*i32" if p.name == "count_ptr" else "*fp32")
        else:
            sig[p.name] = "fp32" if p.name == "eps" else "i32"
    return sig
