"""Memory-saving composite: GR-KAN's first rational followed by fc1, with the rational's output
recomputed in backward instead of stored.

Unfused, autograd keeps two (..., C) tensors per block for this pair: the rational's input x (its
backward needs it) and its output y = F(x) (fc1's weight gradient needs it). ViT keeps one (fc1's
input). ``rational_linear`` keeps only x and recomputes y = F(x) in backward (one extra element-wise
pass, cheap next to the matmuls), so a KAT block saves what a ViT block saves.

The result and every gradient equal the unfused ``F.linear(group_rational(x, a, b), W, bias)`` under
the same autocast state (tested in tests/test_fused.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .ops.group_rational import group_rational

__all__ = ["rational_linear"]


def _autocast_state(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return True, torch.get_autocast_dtype(device_type)
    return False, None


class _RationalLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, numerator, denominator, weight, bias, impl):
        ctx.device_type = x.device.type
        ctx.autocast = _autocast_state(ctx.device_type)
        ctx.impl = impl
        y = group_rational(x, numerator, denominator, impl=impl)  # Function.forward records no graph
        out = F.linear(y, weight, bias)  # autocast (if on) casts y and the weights as usual
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, numerator, denominator, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, numerator, denominator, weight = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        xg, ag, bg = (t.detach().requires_grad_(t.requires_grad) for t in (x, numerator, denominator))
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            y = group_rational(xg, ag, bg, impl=ctx.impl)
        compute = dtype if enabled else grad_out.dtype  # the dtype F.linear ran in
        yc, wc, go = y.detach().to(compute), weight.to(compute), grad_out.to(compute)
        go2, y2 = go.reshape(-1, go.shape[-1]), yc.reshape(-1, yc.shape[-1])
        grad_w = (go2.t() @ y2).to(weight.dtype) if ctx.needs_input_grad[3] else None
        grad_b = go2.sum(0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[4] else None
        grad_y = (go @ wc).to(y.dtype)
        wanted = [t for t in (xg, ag, bg) if t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad_y) if wanted else ())
        gx, ga, gb = (next(grads) if t.requires_grad else None for t in (xg, ag, bg))
        return gx, ga, gb, grad_w, grad_b, None


def rational_linear(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                    weight: torch.Tensor, bias: Optional[torch.Tensor] = None, impl: str = "auto") -> torch.Tensor:
    """``F.linear(group_rational(x, numerator, denominator), weight, bias)`` (channels last), storing
    only x for backward. Plain (non-recomputing) composition when nothing needs a gradient."""
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad
                                              for t in (x, numerator, denominator, weight, bias)):
        return F.linear(group_rational(x, numerator, denominator, impl=impl), weight, bias)
    return _RationalLinear.apply(x, numerator, denominator, weight, bias, impl)
