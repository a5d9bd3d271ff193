"""The op's autograd and its ``torch.library`` registration.

``GroupRationalFunction`` is the one autograd.Function: eager calls hand it their cached
:class:`~.plan.Plan`; under ``torch.compile`` it records the custom ops ``kat::group_rational_fwd``
and ``kat::group_rational_bwd`` instead, whose fake implementations give Inductor the output
shapes and strides, and whose real ones look the plan up in the same cache. Saved for backward: x
and the coefficients only (backward recomputes P and Q).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .plan import MAX_ORDER, empty_output, plan_for, rows_layout

_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_available() -> bool:
    """True when Triton is installed (needed for impl='triton')."""
    return _TRITON_INSTALLED


def triton_supports(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> str | None:
    """None if the fused kernels can run this call, else the reason they cannot."""
    if not triton_available():
        return "Triton is not installed"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return f"the kernels need a CUDA tensor (or TRITON_INTERPRET=1 on the CPU), got device {x.device}"
    if x.dtype not in _KERNEL_DTYPES:
        return f"the kernels take float32/float16/bfloat16 inputs, got {x.dtype}"
    m, n = numerator.shape[1] - 1, denominator.shape[1]
    if m > MAX_ORDER[0] or n > MAX_ORDER[1]:
        return f"the kernels implement orders up to (m, n) = {MAX_ORDER}, got ({m}, {n})"
    return None


@torch.library.custom_op("kat::group_rational_fwd", mutates_args=())
def group_rational_fwd(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                       channel_dim: int) -> torch.Tensor:
    return plan_for(x, numerator, denominator, channel_dim % x.dim()).forward(x, numerator, denominator)


@group_rational_fwd.register_fake
def _(x, numerator, denominator, channel_dim):
    cd = channel_dim % x.dim()
    return empty_output(x, cd, rows_layout(x, cd))


@torch.library.custom_op("kat::group_rational_bwd", mutates_args=())
def group_rational_bwd(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                       denominator: torch.Tensor, channel_dim: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    plan = plan_for(x, numerator, denominator, channel_dim % x.dim())
    return plan.backward(grad_out, x, numerator, denominator)


@group_rational_bwd.register_fake
def _(grad_out, x, numerator, denominator, channel_dim):
    cd = channel_dim % x.dim()
    return empty_output(x, cd, rows_layout(x, cd)), torch.empty_like(numerator), torch.empty_like(denominator)


class GroupRationalFunction(torch.autograd.Function):
    """``apply(x, numerator, denominator, plan, channel_dim)``: ``plan`` is the eager call's Plan, or
    None under torch.compile (the custom ops then). No torch.amp decorators: the op computes in
    its input's dtype whether or not autocast is on, and its backward runs no autocast-eligible op."""

    @staticmethod
    def forward(ctx, x, numerator, denominator, plan, channel_dim):
        ctx.save_for_backward(x, numerator, denominator)
        ctx.plan, ctx.channel_dim = plan, channel_dim
        if plan is None:
            return torch.ops.kat.group_rational_fwd(x, numerator, denominator, channel_dim)
        return plan.forward(x, numerator, denominator)

    @staticmethod
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        if ctx.plan is None:
            gx, ga, gb = torch.ops.kat.group_rational_bwd(grad_out, x, numerator, denominator, ctx.channel_dim)
        else:
            gx, ga, gb = ctx.plan.backward(grad_out, x, numerator, denominator)
        return gx, ga, gb, None, None
