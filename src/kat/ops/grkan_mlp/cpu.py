"""The GR-KAN MLP node's rationals on the CPU: the group-rational op computed in PyTorch in blocks of
rows small enough to stay in the CPU's cache, with a hand-written backward.

The reference (``kat.ops.group_rational.reference``) evaluates a rational as about two dozen passes
over the whole tensor and lets autograd keep the intermediates; on a CPU every pass goes to memory,
and the rationals cost as much as the rest of a KAT. Here each block of rows runs the same Horner
steps (one multiply-add each) while it is in cache, and backward recomputes P and Q from x and sums
the coefficient gradients per block. Same formula and derivative convention (d|t|/dt = +1 at 0);
a block where P or Q overflows fp32 is handed to the reference, which evaluates (and
differentiates) its overflow-safe form. Same interface as the kernels' ``Plan``: ``forward(x, a, b)``
and ``backward(grad_y, x, a, b)`` on contiguous (rows, C) matrices.
"""
from __future__ import annotations

import torch

from ..group_rational.reference import evaluate

_BLOCK = 1 << 16  # elements per block: a few such float32 buffers stay within a core's L2


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t < 0, -1.0, 1.0).to(t.dtype)


class CPURational:
    """A rational's calls on (rows, C) matrices of one width and group count, on the CPU."""

    __slots__ = ("c", "groups", "shared")

    def __init__(self, c: int, groups: int, shared: bool):
        self.c, self.groups, self.shared = c, groups, shared

    def _rows(self, coef: torch.Tensor) -> torch.Tensor:
        """(C, k) float32 per-channel rows of (1 or G, k) coefficients."""
        coef = coef.detach().float()
        return coef.expand(self.c, -1) if coef.shape[0] == 1 else coef.repeat_interleave(self.c // self.groups, 0)

    def _pq(self, xb, a, b):
        p = torch.addcmul(a[-2], xb, a[-1])
        for k in range(a.shape[0] - 3, -1, -1):
            p = torch.addcmul(a[k], xb, p)
        ax = xb.abs()
        q = b[-1].expand_as(xb) if b.shape[0] == 1 else torch.addcmul(b[-2], ax, b[-1])
        for k in range(b.shape[0] - 3, -1, -1):
            q = torch.addcmul(b[k], ax, q)
        return p, torch.addcmul(xb.new_ones(()), ax, q), ax

    def forward(self, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        a, b = self._rows(numerator).t().contiguous(), self._rows(denominator).abs().t().contiguous()
        y = torch.empty_like(x)
        step = max(1, _BLOCK // self.c)
        for r in range(0, x.shape[0], step):
            xb = x[r:r + step].float()
            p, q, _ = self._pq(xb, a, b)
            yb = p / q
            if not bool(torch.isfinite(yb.sum())):  # overflow somewhere (or NaN/Inf input)
                yb = evaluate(xb, numerator.detach(), denominator.detach(), 1)
            y[r:r + step] = yb
        return y

    def backward(self, grad_y: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                 denominator: torch.Tensor):
        a_rows, b_rows = self._rows(numerator), self._rows(denominator)
        a, b = a_rows.t().contiguous(), b_rows.abs().t().contiguous()
        m1, n = a.shape[0], b.shape[0]
        # derivative coefficients: P' = sum k a_k x^(k-1), Q'/sign(x) = sum j |b_j| |x|^(j-1)
        da = a[1:] * torch.arange(1, m1, dtype=a.dtype)[:, None]
        db = b * torch.arange(1, n + 1, dtype=b.dtype)[:, None]
        gx = torch.empty_like(x)
        acc = torch.zeros(m1 + n, self.c)  # per-channel sums: d/da_0..a_m, d/d|b_1|..|b_n|
        step = max(1, _BLOCK // self.c)
        for r in range(0, x.shape[0], step):
            xb, gb = x[r:r + step].float(), grad_y[r:r + step].float()
            p, q, ax = self._pq(xb, a, b)
            f = p / q
            if not bool(torch.isfinite(f.sum())):  # the reference differentiates its overflow-safe form
                xr = xb.detach().requires_grad_()
                ar, br = (t.detach().float().requires_grad_() for t in (numerator, denominator))
                with torch.enable_grad():
                    g = torch.autograd.grad(evaluate(xr, ar, br, 1), (xr, ar, br), gb)
                gx[r:r + step] = g[0]
                acc += self._fallback_sums(g[1], g[2], denominator)
                continue
            dp = da[-1].expand_as(xb) if m1 == 2 else torch.addcmul(da[-2], xb, da[-1])
            for k in range(m1 - 4, -1, -1):
                dp = torch.addcmul(da[k], xb, dp)
            dq = db[-1].expand_as(xb) if n == 1 else torch.addcmul(db[-2], ax, db[-1])
            for k in range(n - 3, -1, -1):
                dq = torch.addcmul(db[k], ax, dq)
            rr = gb / q
            # Q' = sign(x) dq with sign(0) = +1: dq >= 0, so copysign gives it x's sign; x + 0.0 turns
            # -0.0 into +0.0 (a torch.where on x < 0 costs ~30x more on a CPU)
            torch.mul(rr, torch.addcmul(dp, f, torch.copysign(dq, xb + 0.0), value=-1.0), out=gx[r:r + step])
            term = rr
            acc[0] += term.sum(0)
            for i in range(1, m1):
                term = term * xb
                acc[i] += term.sum(0)
            term = -(rr * f)
            for j in range(n):
                term = term * ax
                acc[m1 + j] += term.sum(0)
        groups = acc.view(m1 + n, self.groups, self.c // self.groups).sum(2).t()  # (G, m+1+n)
        ga = groups[:, :m1].sum(0, keepdim=True) if numerator.shape[0] == 1 else groups[:, :m1]
        gb_ = groups[:, m1:] * _sign(denominator.detach().float())
        return gx, ga.to(numerator.dtype), gb_.to(denominator.dtype)

    def _fallback_sums(self, ga, gb, denominator):
        """A block's reference coefficient gradients (summed per group) in the accumulator's layout:
        per term, each group's sum on its first channel (the group sums add them up), d/d|b| as
        d/db times sign(b); a shared numerator's total spread evenly over the groups."""
        m1, gs = ga.shape[1], self.c // self.groups
        out = torch.zeros(m1 + gb.shape[1], self.c)
        if ga.shape[0] == 1:
            ga = ga.expand(self.groups, -1) / self.groups
        out[:m1, ::gs] = ga.t()
        out[m1:, ::gs] = (gb * _sign(denominator.detach().float())).t()
        return out
