"""The GR-KAN MLP node's rationals on the CPU: the group-rational formula as one compiled loop per
direction (``cpu_loops.py``, numba), with the reference's overflow-safe form where P or Q overflows.

The reference (``kat.ops.group_rational.reference``) evaluates a rational as about two dozen passes
over the whole tensor and lets autograd keep the intermediates; on a CPU every pass goes to memory,
and the rationals cost as much as the rest of a KAT. The loops make one pass each way, and
backward recomputes P and Q from x. Same formula and derivative convention (d|t|/dt = +1 at 0);
where any output is not finite (P or Q overflowed fp32, or x held NaN/Inf) the call is handed to
the reference, which evaluates (and differentiates) its overflow-safe form. Same interface as the
kernels' ``Plan``: ``forward(x, a, b)`` and ``backward(grad_y, x, a, b)`` on contiguous (rows, C)
matrices. Without numba installed the node does not take the CPU (``available()``).
"""
from __future__ import annotations

import importlib.util

import torch

from ..group_rational.reference import evaluate

MAX_ORDERS = (5, 4)  # the loops' numerator and denominator orders, the kernels' limit
_PAD = (MAX_ORDERS[0] + 1, MAX_ORDERS[1])


def available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _loops():
    from . import cpu_loops  # numba compiles (or loads its cache) on first use, not at `import kat`
    import numba
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return cpu_loops, numba.get_num_threads()


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t < 0, -1.0, 1.0).to(t.dtype)


class CPURational:
    """A rational's calls on (rows, C) matrices of one width and group count, on the CPU."""

    __slots__ = ("c", "groups", "shared")

    def __init__(self, c: int, groups: int, shared: bool):
        self.c, self.groups, self.shared = c, groups, shared

    def _rows(self, coef: torch.Tensor, order: int) -> torch.Tensor:
        """(order, C) float32 per-channel rows of (1 or G, k) coefficients, zero-padded to order."""
        coef = coef.detach().float()
        rows = torch.zeros(order, self.c)
        rows[:coef.shape[1]] = (coef.expand(self.c, -1) if coef.shape[0] == 1
                                else coef.repeat_interleave(self.c // self.groups, 0)).t()
        return rows

    def forward(self, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        loops, threads = _loops()
        x32 = x.detach().float().contiguous()
        y = torch.empty_like(x32)
        check = torch.zeros(threads, self.c)
        loops.forward(x32.numpy(), self._rows(numerator, _PAD[0]).numpy(),
                      self._rows(denominator, _PAD[1]).abs().numpy(), y.numpy(), check.numpy())
        if not bool(torch.isfinite(check.sum())):  # overflow somewhere (or NaN/Inf input)
            y = evaluate(x32, numerator.detach(), denominator.detach(), 1)
        return y.to(x.dtype)

    def backward(self, grad_y: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                 denominator: torch.Tensor):
        loops, threads = _loops()
        x32, g32 = x.detach().float().contiguous(), grad_y.detach().float().contiguous()
        m1, n = numerator.shape[1], denominator.shape[1]
        gx = torch.empty_like(x32)
        sums = torch.zeros(threads, sum(_PAD), self.c)
        check = torch.zeros(threads, self.c)
        loops.backward(g32.numpy(), x32.numpy(), self._rows(numerator, _PAD[0]).numpy(),
                       self._rows(denominator, _PAD[1]).abs().numpy(), gx.numpy(), sums.numpy(),
                       check.numpy())
        if not bool(torch.isfinite(check.sum())):  # the reference differentiates its overflow-safe form
            xr = x32.requires_grad_()  # x32 is already detached
            ar, br = (t.detach().float().requires_grad_() for t in (numerator, denominator))
            with torch.enable_grad():
                gx, ga, gb = torch.autograd.grad(evaluate(xr, ar, br, 1), (xr, ar, br), g32)
            return gx.to(x.dtype), ga.to(numerator.dtype), gb.to(denominator.dtype)
        acc = sums.sum(0)
        acc = torch.cat([acc[:m1], acc[_PAD[0]:_PAD[0] + n]])  # the orders this rational has
        groups = acc.view(m1 + n, self.groups, self.c // self.groups).sum(2).t()  # (G, m+1+n)
        ga = groups[:, :m1].sum(0, keepdim=True) if numerator.shape[0] == 1 else groups[:, :m1]
        gb = groups[:, m1:] * _sign(denominator.detach().float())
        return gx.to(x.dtype), ga.to(numerator.dtype), gb.to(denominator.dtype)
