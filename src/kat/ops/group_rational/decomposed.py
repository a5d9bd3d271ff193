"""The reference's formula for compilers: what a ``torch.compile``-d call records where the call
would run on the reference (the CPU; ``impl="torch"``; inputs the kernels do not take).

Through the reference itself, autograd records every Horner step and keeps its intermediates for
backward, which Inductor then has to store and reload. Here one autograd.Function computes the
reference's forward (direct form, the overflow-safe form where it overflowed) and saves only x and
the coefficients; its backward is written out (dL/dx and the coefficient sums, as the kernels
compute them), so Inductor fuses each direction into a few loops. The backward differentiates the
direct form, as the kernels do: where P or Q overflows (|x| beyond ~4e7 in fp32) its gradients are
not finite, where eager calls differentiate the overflow-safe form.
"""
from __future__ import annotations

import torch

from .reference import compute_dtype, evaluate

__all__ = ["DecomposedRational"]


def _horner(coefs: list, t: torch.Tensor) -> torch.Tensor:
    """sum_k coefs[k] t^k (coefs low to high, each broadcastable against t)."""
    acc = coefs[-1] + torch.zeros_like(t)
    for c in reversed(coefs[:-1]):
        acc = acc * t + c
    return acc


class DecomposedRational(torch.autograd.Function):
    """``apply(x, numerator, denominator, channel_dim)`` on validated inputs, channel_dim >= 0."""

    @staticmethod
    def forward(ctx, x, numerator, denominator, channel_dim):
        ctx.save_for_backward(x, numerator, denominator)
        ctx.channel_dim = channel_dim
        return evaluate(x, numerator, denominator, channel_dim)

    @staticmethod
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        cd, groups = ctx.channel_dim, denominator.shape[0]
        dt = compute_dtype(x.dtype)
        # channels last, split into (..., G, C/G); coefficients as (Gx, 1) columns against that
        xg = x.movedim(cd, -1).to(dt).unflatten(-1, (groups, -1))
        go = grad_out.movedim(cd, -1).to(dt).unflatten(-1, (groups, -1))
        a = [numerator[:, k].to(dt)[:, None] for k in range(numerator.shape[1])]
        b = [denominator[:, j].to(dt).abs()[:, None] for j in range(denominator.shape[1])]
        ax = xg.abs()
        p = _horner(a, xg)
        q = 1 + ax * _horner(b, ax)
        dp = _horner([k * a[k] for k in range(1, len(a))], xg) if len(a) > 1 else torch.zeros_like(xg)
        dq = _horner([j * b[j - 1] for j in range(1, len(b) + 1)], ax)
        dq = torch.where(xg < 0, -dq, dq)  # d|x|/dx = +1 at 0, the kernels' convention
        r = go / q
        f = p / q
        gx = (r * (dp - f * dq)).flatten(-2).movedim(-1, cd).to(x.dtype)
        dims = tuple(range(xg.dim() - 2)) + (xg.dim() - 1,)  # every axis but the group's
        terms, t = [r.sum(dims)], r
        for _ in range(1, len(a)):
            t = t * xg
            terms.append(t.sum(dims))
        ga = torch.stack(terms, -1)  # (G, m+1)
        if numerator.shape[0] == 1:
            ga = ga.sum(0, keepdim=True)
        terms, t = [], -r * f
        for _ in b:
            t = t * ax
            terms.append(t.sum(dims))
        sign_b = torch.where(denominator < 0, -1.0, 1.0).to(dt)  # +1 at 0, as for x
        gb = torch.stack(terms, -1) * sign_b
        return gx, ga.to(numerator.dtype), gb.to(denominator.dtype), None
