"""Triton kernels for LayerNorm followed by a group rational in one pass, forward and backward
(host side: ``__init__.py``). They reuse the group-rational kernels' building blocks (coefficient
loads, P/Q, the overflow-safe scaled form, the gradient terms)."""
from __future__ import annotations

import triton
import triton.language as tl

from ..group_rational.kernels import _grad_terms, _load_coefficients, _pq, _rcp_q, _scaled_form


@triton.jit
def layernorm_rational_fwd_kernel(x_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, y_ptr,
                                  S, C, GROUP_SIZE, a_group_stride, stride_xs, stride_ys, eps,
                                  BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = F(LayerNorm(x)) for BLOCK_M rows of C (<= BLOCK_C) unit-stride channels: the row's mean
    and biased variance in fp32 (as torch's layer_norm), z = (x - mean) / sqrt(var + eps) * w + bias,
    then the group rational of z, overflow-safe element by element (the forward's SELECT form).
    One read of x and one write of y instead of LayerNorm's write, a cast and the rational's read."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mask = (rows < S)[:, None] & mask_c[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    z = xc * rstd[:, None] * w[None, :] + bias[None, :]
    a0, a1, a2, a3, a4, a5, b1, b2, b3, b4 = _load_coefficients(
        a_ptr, b_ptr, cols, mask_c, C, GROUP_SIZE, a_group_stride)
    b1, b2, b3, b4 = tl.abs(b1), tl.abs(b2), tl.abs(b3), tl.abs(b4)
    az = tl.abs(z)
    p, q = _pq(z, az, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
    y = p * _rcp_q(q)
    scaled = ((tl.abs(p) == float("inf")) | (q == float("inf"))) & (az < float("inf"))
    y = tl.where(scaled, _scaled_form(z, scaled, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4), y)
    tl.store(y_ptr + rows[:, None] * stride_ys + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def layernorm_rational_bwd_kernel(x_ptr, gy_ptr, gx_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, partial_ptr, lnp_ptr,
                                  S, C, GROUP_SIZE, a_group_stride, stride_xs, stride_gs, stride_dxs, eps,
                                  NUM_PROGRAMS, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Backward of y = F(LayerNorm(x)): program p walks row blocks p, p + P, ... (P = NUM_PROGRAMS),
    recomputes the row statistics and z, writes grad_x, and accumulates per column the rational's
    ten coefficient terms (to partial[p, c, :], denominator terms times sign(b)) and LayerNorm's
    weight and bias gradients (to lnp[p, 0, c] and lnp[p, 1, c]); the host reduces the partials in a
    fixed order (deterministic)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    bias = tl.load(bias_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    a0, a1, a2, a3, a4, a5, sb1, sb2, sb3, sb4 = _load_coefficients(
        a_ptr, b_ptr, cols, mask_c, C, GROUP_SIZE, a_group_stride)
    b1, b2, b3, b4 = tl.abs(sb1), tl.abs(sb2), tl.abs(sb3), tl.abs(sb4)
    zero = tl.zeros([1, BLOCK_C], dtype=tl.float32)
    acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5 = zero, zero, zero, zero, zero, zero
    acc_b1, acc_b2, acc_b3, acc_b4, acc_dw, acc_db = zero, zero, zero, zero, zero, zero
    for blk in range(pid, tl.cdiv(S, BLOCK_M), NUM_PROGRAMS):
        rows = (blk * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < S)[:, None] & mask_c[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        go = tl.load(gy_ptr + rows[:, None] * stride_gs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
        xhat = xc * rstd[:, None]
        z = xhat * w + bias
        dz, r, f, az, z2, z3, z4, z5 = _grad_terms(z, go, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
        acc_a0 += tl.sum(r, axis=0, keep_dims=True)
        acc_a1 += tl.sum(r * z, axis=0, keep_dims=True)
        acc_a2 += tl.sum(r * z2, axis=0, keep_dims=True)
        acc_a3 += tl.sum(r * z3, axis=0, keep_dims=True)
        acc_a4 += tl.sum(r * z4, axis=0, keep_dims=True)
        acc_a5 += tl.sum(r * z5, axis=0, keep_dims=True)
        t = -r * f
        acc_b1 += tl.sum(t * az, axis=0, keep_dims=True)
        acc_b2 += tl.sum(t * z2, axis=0, keep_dims=True)
        acc_b3 += tl.sum(t * tl.abs(z3), axis=0, keep_dims=True)
        acc_b4 += tl.sum(t * z4, axis=0, keep_dims=True)
        acc_dw += tl.sum(dz * xhat, axis=0, keep_dims=True)
        acc_db += tl.sum(dz, axis=0, keep_dims=True)
        g = dz * w
        c1 = tl.sum(g * xhat, axis=1) / C
        c2 = tl.sum(g, axis=1) / C
        dx = (g - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
        tl.store(gx_ptr + rows[:, None] * stride_dxs + cols[None, :], dx.to(gx_ptr.dtype.element_ty), mask=mask)
    out = partial_ptr + (pid.to(tl.int64) * C + cols) * 10
    tl.store(out + 0, tl.reshape(acc_a0, [BLOCK_C]), mask=mask_c)
    tl.store(out + 1, tl.reshape(acc_a1, [BLOCK_C]), mask=mask_c)
    tl.store(out + 2, tl.reshape(acc_a2, [BLOCK_C]), mask=mask_c)
    tl.store(out + 3, tl.reshape(acc_a3, [BLOCK_C]), mask=mask_c)
    tl.store(out + 4, tl.reshape(acc_a4, [BLOCK_C]), mask=mask_c)
    tl.store(out + 5, tl.reshape(acc_a5, [BLOCK_C]), mask=mask_c)
    tl.store(out + 6, tl.reshape(acc_b1 * tl.where(sb1 < 0, -1.0, 1.0), [BLOCK_C]), mask=mask_c)
    tl.store(out + 7, tl.reshape(acc_b2 * tl.where(sb2 < 0, -1.0, 1.0), [BLOCK_C]), mask=mask_c)
    tl.store(out + 8, tl.reshape(acc_b3 * tl.where(sb3 < 0, -1.0, 1.0), [BLOCK_C]), mask=mask_c)
    tl.store(out + 9, tl.reshape(acc_b4 * tl.where(sb4 < 0, -1.0, 1.0), [BLOCK_C]), mask=mask_c)
    ln = lnp_ptr + pid.to(tl.int64) * 2 * C + cols
    tl.store(ln, tl.reshape(acc_dw, [BLOCK_C]), mask=mask_c)
    tl.store(ln + C, tl.reshape(acc_db, [BLOCK_C]), mask=mask_c)
