"""A GR-KAN MLP's pieces as ops: ``grkan_mlp`` (the whole MLP as one autograd node, the eager fast
path of ``kat.layers.GRKAN``) and ``rational_linear`` (the first rational and fc1 with the
rational's output recomputed in backward instead of stored).

``grkan_mlp``: unfused, one MLP puts two rational Functions and the linears' own nodes (addmm,
transposes, autocast's casts) into the autograd graph, and each costs host time forward and
backward; eager KAT-T/S training is bound by that host time. Here the MLP is one node: forward
runs the rationals' kernel plans and two matmuls, backward the linears' backward by hand between
the rationals' backward kernels. Same kernels, same matmuls, same saved tensors as the modules.
On the CPU (``impl="auto"``, numba installed) the rationals in the node are ``cpu.CPURational``:
the reference's formula as one compiled loop each way.

``rational_linear``: autograd would keep both the rational's input and its output (fc1's weight
gradient needs it) where ViT keeps one tensor; this keeps only the input and recomputes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..group_rational import group_rational, plan_for, resolve
from . import cpu

__all__ = ["grkan_mlp", "rational_linear", "autocast_dtype"]

_PLANS: dict = {}  # key (see grkan_mlp) -> _MLPPlan, or False where the one-node path does not apply
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast casts to on this device type, or None: autocast off, or a device type it
    does not know (``meta``: building a model without memory)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # "unknown device type for autocast"
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def grkan_mlp(x: torch.Tensor, a1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w1: torch.Tensor,
              c1: Optional[torch.Tensor], a2: torch.Tensor, b2: torch.Tensor, w2: torch.Tensor,
              c2: Optional[torch.Tensor], *, impl: str = "auto", recompute_act1: bool = False
              ) -> Optional[torch.Tensor]:
    """``fc2(act2(fc1(act1(x))))`` as one autograd node, or None where that path does not apply
    (the caller then runs the modules): under torch.compile, where a rational is asked to run on
    the PyTorch reference (``impl="torch"``, or a GPU call the kernels do not take), for
    non-contiguous inputs or parameters that do not chain.
    a/b: a rational's numerator and denominator (a1 = b1 = None: act1 was applied before);
    w/c: a linear's weight and bias (either bias may be None). Under autocast, x and the weights
    are cast to the autocast dtype as the unfused modules cast them."""
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
        return None
    dev = x.device
    dt = autocast_dtype(dev.type)
    key = (x.shape, x.dtype, dev, dt, w1.shape, w1.dtype, w2.shape, None if a1 is None else a1.shape,
           None if b1 is None else b1.shape, a2.shape, b2.shape, impl, recompute_act1)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _new_plan(x, dt, a1, b1, w1, c1, a2, b2, w2, c2, impl, recompute_act1)
        if len(_PLANS) >= 4096:
            _PLANS.clear()
        _PLANS[key] = plan
    if not plan or not x.is_contiguous():
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, a1, b1, w1, c1, a2, b2, w2, c2)):
        return plan.function.apply(x, a1, b1, w1, c1, a2, b2, w2, c2)
    return plan.forward(x, a1, b1, w1, c1, a2, b2, w2, c2)


def _new_plan(x, dtype, a1, b1, w1, c1, a2, b2, w2, c2, impl, recompute):
    """An :class:`_MLPPlan` for calls like this one under autocast to ``dtype`` (None: off), or False:
    a rational neither on the kernels nor on ``CPURational`` (CPU, ``impl="auto"``), inputs the unfused MLP would not cast to the compute dtype,
    parameters of another dtype than the computation without autocast (the modules then raise as
    PyTorch does), shapes that do not chain (F.linear then raises)."""
    params = [t for t in (w1, c1, w2, c2) if t is not None]
    if not x.is_floating_point() or x.dim() < 2 or w1.dim() != 2 or w2.dim() != 2:
        return False
    if any(t.device != x.device for t in params + [a2, b2]):
        return False
    if dtype is None:
        dtype = x.dtype
        if any(t.dtype != dtype for t in params):
            return False
    elif x.dtype not in (dtype, torch.float32):
        return False
    rows, c = math.prod(x.shape[:-1]), x.shape[-1]
    hidden = w1.shape[0]
    if w1.shape[1] != c or w2.shape[1] != hidden:
        return False
    plans = []
    for a, b, width in ((a1, b1, c), (a2, b2, hidden)):
        if a is None:
            plans.append(None)
            continue
        probe = torch.empty((rows, width), dtype=dtype, device=x.device)
        try:
            chosen = resolve(probe, a, b, impl)[1]  # the rational's own checks and choice
        except (TypeError, ValueError):
            return False  # the modules raise the rational's own error
        if chosen == "triton":
            with torch.no_grad():
                plans.append(plan_for(probe.normal_(), a.detach(), b.detach(), 1))
        elif (impl == "auto" and x.device.type == "cpu" and dtype in _CPU_DTYPES and cpu.available()
              and a.shape[1] <= cpu.MAX_ORDERS[0] + 1 and b.shape[1] <= cpu.MAX_ORDERS[1]):
            plans.append(cpu.CPURational(width, b.shape[0], a.shape[0] == 1))
        else:
            return False
    return _MLPPlan(plans[0], plans[1], dtype, x.shape, w2.shape[0], recompute and plans[0] is not None)


class _MLPPlan:
    """The MLP's calls at one input shape, dtype, compute dtype and device: the rationals' plans
    (``act1`` None where act1 is applied elsewhere) and an autograd.Function bound to them."""

    __slots__ = ("act1", "act2", "dtype", "rows", "out_shape", "function")

    def __init__(self, act1, act2, dtype: torch.dtype, x_shape, out_features: int, recompute: bool):
        self.act1, self.act2, self.dtype = act1, act2, dtype
        self.rows = math.prod(x_shape[:-1])
        self.out_shape = (*x_shape[:-1], out_features)
        self.function = _mlp_function(self, recompute)

    def forward(self, x, a1, b1, w1, c1, a2, b2, w2, c2):
        """The output, nothing recorded for backward (inference)."""
        x2 = x.view(self.rows, x.shape[-1])
        if x2.dtype != self.dtype:
            x2 = x2.to(self.dtype)
        h = self.act1.forward(x2, a1, b1) if self.act1 is not None else x2
        # autocast, where on, casts the weights and biases as in the unfused modules
        out = F.linear(self.act2.forward(F.linear(h, w1, c1), a2, b2), w2, c2)
        return out.view(self.out_shape)


def _mlp_function(mlp: _MLPPlan, recompute: bool):
    """The MLP's autograd.Function, the plans reached through the closure (no non-tensor
    arguments). It computes on (rows, features) matrices; gradients leave in the compute dtype and
    the autograd engine casts them to each input's dtype, as the unfused graph's casts do."""
    p1, p2, dt, rows, out_shape = mlp.act1, mlp.act2, mlp.dtype, mlp.rows, mlp.out_shape

    class GRKANFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, a1, b1, w1, c1, a2, b2, w2, c2):
            xc = x.view(rows, x.shape[-1])
            if xc.dtype != dt:
                xc = xc.to(dt)
            h = p1.forward(xc, a1, b1) if p1 is not None else xc
            w1c = w1 if w1.dtype == dt else w1.to(dt)  # autocast's casts, kept for backward
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
                if h is None:  # recomputed: act1's output was not stored
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


def _autocast_state(device_type: str):
    dtype = autocast_dtype(device_type)
    return dtype is not None, dtype


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
    only x for backward; the plain composition when nothing needs a gradient."""
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad
                                              for t in (x, numerator, denominator, weight, bias)):
        return F.linear(group_rational(x, numerator, denominator, impl=impl), weight, bias)
    return _RationalLinear.apply(x, numerator, denominator, weight, bias, impl)
