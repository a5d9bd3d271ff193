"""The CPU rationals' loops, compiled by numba (imported only when a CPU plan is first made).

One pass over x per direction, each element's P, Q (and P', Q') by Horner's rule in registers, the
inner loop along the channels so that LLVM vectorises it: the blocked PyTorch form this replaced
made about two dozen passes and cost 4-10x a GELU; these cost about one (BENCHMARKS.md).
Coefficients come zero-padded to orders (5, 4), the kernels' limit, as (6, C) and (4, C) rows: a
zero leading coefficient leaves each Horner step exact. ``check`` collects a per-channel sum of the
outputs: a non-finite entry means that P or Q overflowed (or x was NaN/Inf) somewhere, and the
caller then takes the reference's overflow-safe form.
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def forward(x, a, b, y, check):  # pragma: no cover (compiled)
    """y = P(x) / Q(x) for x, y (R, C) float32; a (6, C); b (4, C) = |b|; check (T, C) zeros."""
    rows, c = x.shape
    chunks = check.shape[0]
    per = (rows + chunks - 1) // chunks
    one = np.float32(1.0)
    for i in prange(chunks):
        s = check[i]
        for r in range(i * per, min(rows, (i + 1) * per)):
            xr, yr = x[r], y[r]
            for j in range(c):
                t = xr[j]
                u = abs(t)
                p = ((((a[5, j] * t + a[4, j]) * t + a[3, j]) * t + a[2, j]) * t + a[1, j]) * t + a[0, j]
                q = (((b[3, j] * u + b[2, j]) * u + b[1, j]) * u + b[0, j]) * u + one
                f = p / q
                yr[j] = f
                s[j] += f


@njit(parallel=True, cache=True)
def backward(g, x, a, b, gx, sums, check):  # pragma: no cover (compiled)
    """gx = dL/dx for g = dL/dy; sums[i] (10, C): chunk i's per-channel sums of dL/da_0..a_5 and
    dL/d|b_1|..|b_4|; check (T, C) as in forward, of F(x). d|x|/dx = +1 at 0 (x >= 0)."""
    rows, c = x.shape
    chunks = sums.shape[0]
    per = (rows + chunks - 1) // chunks
    one, two, three, four, five = np.float32(1), np.float32(2), np.float32(3), np.float32(4), np.float32(5)
    for i in prange(chunks):
        s, chk = sums[i], check[i]
        rq_row = np.empty(c, np.float32)  # dL/dP per channel of the row, then -dL/dP * F
        w_row = np.empty(c, np.float32)
        for r in range(i * per, min(rows, (i + 1) * per)):
            xr, gr, gxr = x[r], g[r], gx[r]
            for j in range(c):
                t = xr[j]
                u = abs(t)
                p = ((((a[5, j] * t + a[4, j]) * t + a[3, j]) * t + a[2, j]) * t + a[1, j]) * t + a[0, j]
                dp = (((five * a[5, j] * t + four * a[4, j]) * t + three * a[3, j]) * t + two * a[2, j]) * t + a[1, j]
                q = (((b[3, j] * u + b[2, j]) * u + b[1, j]) * u + b[0, j]) * u + one
                dq = ((four * b[3, j] * u + three * b[2, j]) * u + two * b[1, j]) * u + b[0, j]
                rq = gr[j] / q
                f = p / q
                gxr[j] = rq * (dp - f * (dq if t >= 0 else -dq))
                rq_row[j] = rq
                w_row[j] = -rq * f
                chk[j] += f
            # the sums as separate simple loops: with them inside the loop above it did not vectorise
            s0, s1, s2, s3, s4, s5 = s[0], s[1], s[2], s[3], s[4], s[5]
            for j in range(c):
                t, v = xr[j], rq_row[j]
                s0[j] += v
                v *= t
                s1[j] += v
                v *= t
                s2[j] += v
                v *= t
                s3[j] += v
                v *= t
                s4[j] += v
                v *= t
                s5[j] += v
            s6, s7, s8, s9 = s[6], s[7], s[8], s[9]
            for j in range(c):
                u = abs(xr[j])
                w = w_row[j] * u
                s6[j] += w
                w *= u
                s7[j] += w
                w *= u
                s8[j] += w
                w *= u
                s9[j] += w
