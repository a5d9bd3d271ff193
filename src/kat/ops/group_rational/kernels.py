"""Triton kernels of the group-rational op: forward, backward, coefficient reduction.

Forward and backward see x as a matrix (S, CA) whose column ``ca`` is channel ``ca % C``:
channels-last tensors as (rows, C), contiguous channels-first (B, C, L) ones as (L, B*C). Orders up
to (5, 4), lower ones zero-padded by the host. Arithmetic is fp32; stores round to the output
dtype. UNIFORM (the block width divides the group size): coefficients loaded once per program.
The backward is persistent along S and writes per-program partial sums of the ten coefficient
terms; the reduction kernels at the end sum them per group in a fixed order (no atomics), so
coefficient gradients are bitwise reproducible.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

NUM_ACC = 10  # d/da_0..a_5 and d/d|b_1|..|b_4|

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
    """The coefficients as scalars, for a block starting at ``col0`` that lies in one group."""
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


# 1/Q as one approximate reciprocal (PTX rcp.approx.ftz.f32, <= 1 ulp): Q >= 1 (or +inf/NaN), so
# the range fix-ups of a full division are never needed. The interpreter cannot run PTX.
_PTX: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


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
        # grid (column blocks, row blocks): programs running at once read whole rows
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
    # Far from 0 (|x| > ~4e7) P or Q can overflow fp32 although P/Q is moderate: _scaled_form there.
    y_ptrs = y_ptr + s[:, None] * stride_ys + cal * stride_yc
    if SELECT:
        # Both forms for every element, chosen element-wise: more arithmetic, no tile-wide test.
        overflowed = (tl.abs(p) == float("inf")) | (q == float("inf"))  # finite x cannot make them NaN
        scaled = overflowed & (ax < float("inf"))  # NaN/Inf inputs keep the direct form's NaN/Inf
        y = tl.where(scaled, _scaled_form(x, scaled, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4), y)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        # A tile where |P| + Q reaches +inf (or NaN) may hold overflowed elements: fix those up.
        big = tl.max(tl.max(tl.abs(p) + q, axis=1), axis=0)
        if (big == float("inf")) | (big != big):
            # Row by row: a whole-tile branch would raise every tile's register peak.
            _fwd_scaled_fixup(x_ptr, y_ptr, a_ptr, b_ptr, pid_s * BLOCK_S, S, cal, ca, mask_c, C,
                              GROUP_SIZE, a_group_stride, stride_xs, stride_xc, stride_ys, stride_yc,
                              BLOCK_S)


@triton.jit
def _scaled_form(x, scaled, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4):
    """P/Q as (P/x^4) / (Q/x^4) with v = 1/x where ``scaled`` (2.0 stands in for x elsewhere)."""
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
    """(dL/dx, r = go/Q, f = P/Q, |x|, x^2 .. x^5) for y = P/Q (b already |b|), upstream go."""
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
    """acc += v; ROW_REDUCE: summed over the tile's rows; FOLD > 1 (a block in one group): each run
    of FOLD neighbouring columns, which one thread holds, summed into one accumulator."""
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
    """One tile: dL/dx, and the ten coefficient terms added up (sign(b) is applied at the end)."""
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

    # ACC_ROWS: 1 with ROW_REDUCE (each tile's rows summed at once), else BLOCK_S (summed at the end)
    zero = tl.zeros([ACC_ROWS, BLOCK_C // FOLD], dtype=tl.float32)
    acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5 = zero, zero, zero, zero, zero, zero
    acc_b1, acc_b2, acc_b3, acc_b4 = zero, zero, zero, zero

    rows = tl.arange(0, BLOCK_S)
    num_tiles = tl.cdiv(S, BLOCK_S)
    if STAGES > 0:
        # Triton's pipeliner streams the next STAGES - 1 tiles through shared memory (sm_80+).
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
        # Loads run two tiles ahead of the arithmetic, in registers; pointers advance by a fixed step.
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


# ---------------------------------------------------------------------------------------------
# The coefficient reduction: per-program partial sums, read as (ROWS, G, GS, NUM_ACC), into the
# coefficient gradients. Host side: reduction.py.

@triton.jit
def coefficient_partials_kernel(partial_ptr, scratch_ptr, count_ptr, gnum_ptr, gden_ptr,
                                ROWS, G, GS, ROWS_PER_PROGRAM, NUM_M, NUM_N,
                                BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, FINISH: tl.constexpr,
                                SHARED: tl.constexpr, BLOCK_RS: tl.constexpr, BLOCK_G: tl.constexpr):
    """Program (g, r): the ten sums of group g over rows [r * ROWS_PER_PROGRAM, ...), to
    scratch[r, g, 0:16], in a fixed order. FINISH: the program that takes the last ticket of
    ``count_ptr`` (acquire-release) also does coefficient_grads_kernel's work and resets the
    counter; which program that is varies, what it sums and in which order does not."""
    g = tl.program_id(0)
    rp = tl.program_id(1)
    col = tl.arange(0, BLOCK_J * 16)
    j = col // 16
    k = col % 16
    rows = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_R, BLOCK_J * 16], dtype=tl.float32)
    r_begin = rp * ROWS_PER_PROGRAM
    r_end = tl.minimum(r_begin + ROWS_PER_PROGRAM, ROWS)
    for r0 in range(r_begin, r_end, BLOCK_R):
        r = r0 + rows
        base = (r.to(tl.int64) * G + g) * GS * 10
        for j0 in range(0, GS, BLOCK_J):
            jj = j0 + j
            mask = (r < r_end)[:, None] & ((jj < GS) & (k < 10))[None, :]
            acc += tl.load(partial_ptr + base[:, None] + (jj * 10 + k)[None, :], mask=mask, other=0.0)
    total = tl.sum(tl.reshape(tl.sum(acc, axis=0), [BLOCK_J, 16]), axis=0)
    tl.store(scratch_ptr + (rp * G + g) * 16 + tl.arange(0, 16), total)
    if FINISH:
        tl.debug_barrier()  # every thread's part of the scratch row is written before the ticket
        ticket = tl.atomic_add(count_ptr, 1, sem="acq_rel")
        if ticket == G * tl.num_programs(1) - 1:
            _coefficient_sums(scratch_ptr, gnum_ptr, gden_ptr, tl.num_programs(1), G, NUM_M, NUM_N,
                              SHARED, BLOCK_RS, BLOCK_G, ".cg")
            tl.atomic_xchg(count_ptr, 0)


@triton.jit
def _coefficient_sums(scratch_ptr, gnum_ptr, gden_ptr, RS, G, NUM_M, NUM_N, SHARED: tl.constexpr,
                      BLOCK_RS: tl.constexpr, BLOCK_G: tl.constexpr, CACHE: tl.constexpr):
    """Sums scratch[0:RS, g, :] per group g (RS <= BLOCK_RS) and writes the denominator gradients
    (G, NUM_N) and the numerator gradients, (1, NUM_M) summed over groups when SHARED, else
    (G, NUM_M). CACHE ".cg": read through L2 only (rows other programs of the same launch wrote)."""
    rs = tl.arange(0, BLOCK_RS)
    k = tl.arange(0, 16)
    num = tl.zeros([16], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        gi = g0 + tl.arange(0, BLOCK_G)
        ptrs = scratch_ptr + ((rs[:, None, None] * G + gi[None, :, None]) * 16 + k[None, None, :])
        mask = (rs < RS)[:, None, None] & (gi < G)[None, :, None] & (k < 16)[None, None, :]
        per_group = tl.sum(tl.load(ptrs, mask=mask, other=0.0, cache_modifier=CACHE), axis=0)  # [BLOCK_G, 16]
        g_ok = (gi < G)[:, None]
        den_cols = ((k >= 6) & (k < 6 + NUM_N))[None, :]
        tl.store(gden_ptr + gi[:, None] * NUM_N + (k - 6)[None, :], per_group, mask=g_ok & den_cols)
        if SHARED:
            num += tl.sum(tl.where(g_ok, per_group, 0.0), axis=0)
        else:
            tl.store(gnum_ptr + gi[:, None] * NUM_M + k[None, :], per_group, mask=g_ok & (k < NUM_M)[None, :])
    if SHARED:
        tl.store(gnum_ptr + k, num, mask=k < NUM_M)


@triton.jit
def coefficient_grads_kernel(scratch_ptr, gnum_ptr, gden_ptr, RS, G, NUM_M, NUM_N,
                             SHARED: tl.constexpr, BLOCK_RS: tl.constexpr, BLOCK_G: tl.constexpr):
    """One program, the second stage where the first did not finish (see _coefficient_sums)."""
    _coefficient_sums(scratch_ptr, gnum_ptr, gden_ptr, RS, G, NUM_M, NUM_N, SHARED, BLOCK_RS, BLOCK_G, "")
