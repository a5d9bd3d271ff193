"""Composites of GR-KAN's pieces: ``rational_linear`` (below) and, further down, the whole GR-KAN
MLP as one autograd node (``MLPPlan``, GRKAN's eager fast path).

``rational_linear``: GR-KAN's first rational followed by fc1, with the rational's output recomputed
in backward instead of stored.

Unfused, autograd keeps two (..., C) tensors per block for this pair: the rational's input x (its
backward needs it) and its output y = F(x) (fc1's weight gradient needs it). ViT keeps one (fc1's
input). ``rational_linear`` keeps only x and recomputes y = F(x) in backward (one extra element-wise
pass, cheap next to the matmuls), so a KAT block saves what a ViT block saves.

The result and every gradient equal the unfused ``F.linear(group_rational(x, a, b), W, bias)`` under
the same autocast state (tested in tests/test_fused.py).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import torch.nn.functional as F

from .ops.group_rational import group_rational, plan_for

__all__ = ["rational_linear", "MLPPlan", "build_mlp_plan", "FUSED_MLP"]


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


# ---------------------------------------------------------------------------------------------
# The whole GR-KAN MLP as one autograd node (the eager fast path of kat.layers.GRKAN)
#
# Unfused, one GR-KAN MLP puts two Python autograd.Functions (the rationals) and the linears' own
# nodes (addmm, transposes, views, autocast's casts of weights and biases) into the graph, and each
# costs host time in forward and in backward. KAT's eager training step on an H200 is bound by host
# time (BENCHMARKS.md: its GPU work is within 7% of ViT's). Here the MLP is one node: forward runs
# the rationals' kernel plans and two matmuls with nothing recorded; backward runs the linears'
# backward by hand (two matmuls and a sum each) between the rationals' backward kernels. Same
# kernels, same matmuls, same saved tensors as the unfused modules.

_MLP_PLANS: dict = {}  # key (see GRKAN._fused_forward) -> MLPPlan, or False where it does not apply
# KAT_FUSED_MLP=0: GR-KAN MLPs run module by module in eager mode too (A/B); set before ``import kat``
# or flip ``kat.fused.FUSED_MLP`` at run time.
FUSED_MLP = os.environ.get("KAT_FUSED_MLP", "1") != "0"


def build_mlp_plan(x: torch.Tensor, dtype: Optional[torch.dtype], act1, act2, fc1, fc2, recompute: bool):
    """An :class:`MLPPlan` for a GR-KAN MLP's calls on inputs like ``x`` (contiguous, channels last)
    under autocast to ``dtype`` (None: autocast off), or False where the fast path does not apply:
    a rational not on the kernels' plans (the PyTorch reference, e.g. on the CPU by default), inputs
    the unfused MLP would not cast to the compute dtype, parameters of another dtype than the
    computation without autocast (the unfused path then raises as PyTorch does), shapes that do
    not chain (F.linear then raises)."""
    params = [t for t in (fc1.weight, fc1.bias, fc2.weight, fc2.bias) if t is not None]
    if not x.is_floating_point() or x.dim() < 2 or fc1.weight.dim() != 2 or fc2.weight.dim() != 2:
        return False
    if any(t.device != x.device for t in params):
        return False
    if dtype is None:
        dtype = x.dtype
        if any(t.dtype != dtype for t in params):
            return False
    elif x.dtype not in (dtype, torch.float32):
        return False
    rows, c = math.prod(x.shape[:-1]), x.shape[-1]
    hidden = fc1.weight.shape[0]
    if fc1.weight.shape[1] != c or fc2.weight.shape[1] != hidden or act2.num_features != hidden \
            or (act1 is not None and act1.num_features != c):
        return False
    with torch.no_grad():
        p1 = None
        if act1 is not None:
            p1 = plan_for(torch.randn((rows, c), dtype=dtype, device=x.device), act1.weight_numerator.detach(),
                          act1.weight_denominator.detach(), act1.impl)
            if p1 is None:
                return False
        p2 = plan_for(torch.randn((rows, hidden), dtype=dtype, device=x.device),
                      act2.weight_numerator.detach(), act2.weight_denominator.detach(), act2.impl)
    if p2 is None:
        return False
    return MLPPlan(p1, p2, dtype, x.shape, fc2.weight.shape[0], recompute and p1 is not None)


class MLPPlan:
    """A GR-KAN MLP's calls at one input shape and dtype, compute dtype and device: the rationals'
    kernel plans (``act1`` None where act1 is applied elsewhere, see
    ``kat.layers.NormAct1``) and an autograd.Function bound to them:
    ``function.apply(x, a1, b1, w1, c1, a2, b2, w2, c2)`` (a/b: a rational's numerator and
    denominator, w/c: a linear's weight and bias, either bias may be None)."""

    __slots__ = ("act1", "act2", "dtype", "recompute", "function", "rows", "out_shape")

    def __init__(self, act1, act2, dtype: torch.dtype, x_shape, out_features: int, recompute: bool):
        self.act1, self.act2, self.dtype, self.recompute = act1, act2, dtype, recompute
        self.rows = math.prod(x_shape[:-1])
        self.out_shape = (*x_shape[:-1], out_features)
        self.function = _mlp_function(self)

    def forward(self, x, a1, b1, w1, c1, a2, b2, w2, c2):
        """The MLP's output, nothing recorded for backward (inference)."""
        dt = self.dtype
        x2 = x.view(self.rows, x.shape[-1])
        if x2.dtype != dt:
            x2 = x2.to(dt)
        h = self.act1.forward(x2, a1, b1) if self.act1 is not None else x2
        # autocast, where on, casts the weights and biases to dt as in the unfused modules
        out = F.linear(self.act2.forward(F.linear(h, w1, c1), a2, b2), w2, c2)
        return out.view(self.out_shape)


def _mlp_function(mlp: MLPPlan):
    """The MLP's autograd.Function (the plans reached through the closure: no non-tensor arguments,
    nothing set on the context but the saved tensors). It computes on (rows, features) matrices, as
    the kernels' plans and the matmuls see them. Gradients leave in the compute dtype; the autograd
    engine casts them to each input's dtype (fp32 parameters under autocast), as the unfused graph's
    cast nodes do."""
    p1, p2, dt, recompute, rows, out_shape = mlp.act1, mlp.act2, mlp.dtype, mlp.recompute, mlp.rows, mlp.out_shape

    class GRKANFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, a1, b1, w1, c1, a2, b2, w2, c2):
            xc = x.view(rows, x.shape[-1])
            if xc.dtype != dt:
                xc = xc.to(dt)
            h = p1.forward(xc, a1, b1) if p1 is not None else xc
            # the weights' casts autocast would make, kept for backward; the biases' are autocast's
            w1c = w1 if w1.dtype == dt else w1.to(dt)
            w2c = w2 if w2.dtype == dt else w2.to(dt)
            z = F.linear(h, w1c, c1)
            g = p2.forward(z, a2, b2)
            out = F.linear(g, w2c, c2)
            ctx.save_for_backward(xc, None if recompute or p1 is None else h, z, g, w1c, w2c, a1, b1, a2, b2)
            return out.view(out_shape)

        @staticmethod
        def backward(ctx, go):
            xc, h, z, g, w1c, w2c, a1, b1, a2, b2 = ctx.saved_tensors
            need = ctx.needs_input_grad
            go2 = go.reshape(rows, go.shape[-1])
            if go2.dtype != dt:
                go2 = go2.to(dt)
            gw2 = go2.t().mm(g) if need[7] else None
            gc2 = go2.sum(0) if need[8] else None
            gz, ga2, gb2 = p2.backward(go2.mm(w2c), z, a2, b2)
            gw1 = gc1 = gx = ga1 = gb1 = None
            if need[3]:
                if h is None:  # recompute: act1's output was not stored
                    h = p1.forward(xc, a1, b1) if p1 is not None else xc
                gw1 = gz.t().mm(h)
            if need[4]:
                gc1 = gz.sum(0)
            if need[0] or need[1] or need[2]:
                gh = gz.mm(w1c)
                if p1 is not None:
                    gx, ga1, gb1 = p1.backward(gh, xc, a1, b1)
                else:
                    gx = gh
                gx = gx.view(go.shape[:-1] + (gx.shape[-1],)) if need[0] else None
            return (gx, ga1 if need[1] else None, gb1 if need[2] else None, gw1, gc1,
                    ga2 if need[5] else None, gb2 if need[6] else None, gw2, gc2)

    return GRKANFunction
