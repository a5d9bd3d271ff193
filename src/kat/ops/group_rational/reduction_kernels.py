"""Triton kernels of the coefficient reduction (host side: ``reduction.py``): the backward's
per-program partial sums into coefficient gradients, in one or two small launches instead of
several torch reductions (less host time per backward). The partial buffer is read as
(ROWS, G, GS, NUM_ACC): ROWS = splits x outer copies of a channel, G groups of GS channels."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def coefficient_partials_kernel(partial_ptr, scratch_ptr, count_ptr, gnum_ptr, gden_ptr,
                                ROWS, G, GS, ROWS_PER_PROGRAM, NUM_M, NUM_N,
                                BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, FINISH: tl.constexpr,
                                SHARED: tl.constexpr, BLOCK_RS: tl.constexpr, BLOCK_G: tl.constexpr):
    """Program (g, r): the ten sums of group g over rows [r * ROWS_PER_PROGRAM, ...) and all its
    channels, to scratch[r, g, 0:16] (columns 10..15 zero). Fixed order: deterministic.

    FINISH: the program that finishes last also does coefficient_grads_kernel's work, so one launch
    does both stages. Each program counts itself in ``count_ptr`` once its scratch row is written
    (a barrier, then one acquire-release atomic: the classic last-block reduction); the program
    that draws the last ticket reads all scratch rows through L2 and resets the counter to zero for
    the next call. Which program that is varies; what it sums, and in which order, does not."""
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
