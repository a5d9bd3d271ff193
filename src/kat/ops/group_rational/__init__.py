"""The group-rational op: ``group_rational(x, numerator, denominator, *, impl="auto")``.

``impl="torch"`` is the exact PyTorch reference (any device, any float dtype); ``impl="triton"`` the
fused kernels (CUDA, or the CPU under ``TRITON_INTERPRET=1``; float32/bfloat16/float16; orders up to
(5, 4)); ``impl="auto"`` takes the kernels for CUDA tensors they support and the reference otherwise.
"""
from __future__ import annotations

import logging
import os

import torch

from .function import GroupRationalFunction, MAX_ORDER, triton_available, triton_supports
from .plan import Plan, _plannable
from .reference import check_inputs, evaluate, group_rational_reference

__all__ = ["group_rational", "group_rational_channels_first", "group_rational_reference",
           "triton_available", "MAX_ORDER", "IMPLS"]

IMPLS = ("auto", "torch", "triton")
_log = logging.getLogger(__name__)
_warned: set[str] = set()
# Eager calls on plain tensors: everything about a call that depends only on its arguments' shapes,
# strides, dtypes and devices (validation, the implementation chosen, the kernels' plan) is
# decided once per distinct key; later calls look it up.
_PLANS: dict = {}
_TORCH = "torch"
# KAT_COMPILED_IMPL=torch: under torch.compile, impl="auto" calls on CUDA take the PyTorch reference,
# which Inductor fuses into its own kernels (as it does ViT's GELU) and recomputes in backward
# (it keeps x and one bool mask), instead of the fused Triton kernels as opaque custom ops. Eager
# calls are unchanged. Opt-in: on the H200 (2026-12-02) KAT-T compiled in default mode with the
# reference (--rational-impl torch, the same graphs) trained at 0.56x compiled ViT-T with 3.2x its
# peak memory, though it inferred at 1.10x (BENCHMARKS.md).
_COMPILED_IMPL = os.environ.get("KAT_COMPILED_IMPL", "triton")
if _COMPILED_IMPL not in ("triton", "torch"):
    raise ValueError(f"KAT_COMPILED_IMPL must be 'triton' or 'torch', got {_COMPILED_IMPL!r}")
_COMPILED_TORCH = _COMPILED_IMPL == "torch"


def _resolve_impl(impl: str, x, numerator, denominator) -> str:
    if impl not in IMPLS:
        raise ValueError(f"group_rational: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch" or (impl == "auto" and x.device.type != "cuda"):
        return "torch"  # auto: the interpreter (TRITON_INTERPRET=1) is for tests, never a default
    if impl == "auto" and _COMPILED_TORCH and torch.compiler.is_compiling():
        return "torch"
    reason = triton_supports(x, numerator, denominator)
    if impl == "triton":
        if reason is not None:
            raise ValueError(f"group_rational: impl='triton' cannot run this call: {reason}")
        return "triton"
    if reason is None:
        return "triton"
    if reason not in _warned:
        # Quietly using the slow path on a GPU would surprise; say it once per reason.
        _warned.add(reason)
        _log.warning("group_rational: using the PyTorch reference on %s because %s", x.device, reason)
    return "torch"


def group_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, *,
                   impl: str = "auto", channel_dim: int = -1) -> torch.Tensor:
    """Apply F(x) = P(x) / Q(x) per channel group (see ``reference.py`` for the formula).

    Args:
        x: input with channels along ``channel_dim`` (default last: ``x[..., C]``).
        numerator: ``(1, m+1)`` shared by all groups, or ``(G, m+1)``.
        denominator: ``(G, n)``; ``G`` must divide ``C``. Channel ``c`` uses group ``c // (C // G)``.
        impl: ``"auto"`` | ``"torch"`` | ``"triton"``.
        channel_dim: the channel axis (``-1`` channels last, ``1`` for ``(B, C, H, W)``).
    Returns:
        A tensor of x's shape and dtype.
    """
    if type(x) is torch.Tensor and not torch.compiler.is_compiling():
        try:
            key = _plan_key(x, numerator, denominator, impl, channel_dim)
            plan = _PLANS.get(key)
        except (AttributeError, TypeError):  # not tensors, or an unhashable impl: the checks below say
            plan = False
        if plan is None:
            plan = _new_cached_plan(key, x, numerator, denominator, impl, channel_dim)
        if plan is _TORCH:
            return evaluate(x, numerator, denominator, channel_dim % x.dim())
        if plan:
            if torch.is_grad_enabled() and (x.requires_grad or numerator.requires_grad
                                            or denominator.requires_grad):
                return plan.function.apply(x, numerator, denominator)
            return plan.forward(x, numerator, denominator)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"group_rational: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("group_rational: x must have at least one dimension (the channels)")
    if not -x.dim() <= channel_dim < x.dim():
        raise ValueError(f"group_rational: channel_dim={channel_dim} is out of range for x of shape "
                         f"{tuple(x.shape)}")
    channel_dim %= x.dim()
    check_inputs(x, numerator, denominator, channel_dim)
    if _resolve_impl(impl, x, numerator, denominator) == "torch":
        return evaluate(x, numerator, denominator, channel_dim)
    return GroupRationalFunction.apply(x, numerator, denominator, channel_dim)


def _new_plan(x, numerator, denominator, impl, channel_dim):
    """Validate a call (raising as group_rational does) and decide how calls like it run: _TORCH
    (the reference), a Plan (the kernels' fast path: channels last, rows collapsible), or False
    (the general path each time)."""
    if x.dim() == 0 or not -x.dim() <= channel_dim < x.dim():
        return False  # let the general path raise
    check_inputs(x, numerator, denominator, channel_dim % x.dim())
    if _resolve_impl(impl, x, numerator, denominator) == "torch":
        return _TORCH
    if channel_dim % x.dim() != x.dim() - 1 or not _plannable(x):
        return False
    return Plan(x, numerator, denominator)


def _plan_key(x, numerator, denominator, impl, channel_dim) -> tuple:
    """Everything a call's plan depends on (see _new_plan)."""
    return (impl, channel_dim, x.shape, x.stride(), x.dtype, x.device, numerator.shape, numerator.dtype,
            numerator.device, denominator.shape, denominator.dtype, denominator.device)


def _new_cached_plan(key, x, numerator, denominator, impl, channel_dim):
    """_new_plan for a key not yet in _PLANS, kept there for the calls after."""
    plan = _new_plan(x, numerator, denominator, impl, channel_dim)
    if len(_PLANS) >= 4096:  # many distinct shapes: start over rather than grow without bound
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def plan_for(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, impl: str = "auto"):
    """The eager fast path's :class:`Plan` for channels-last calls like ``group_rational(x, numerator,
    denominator, impl=impl)`` (the same one such calls use), or None where those calls take another
    path (the PyTorch reference, or the kernels' general path). Raises as ``group_rational`` would
    on invalid arguments."""
    key = _plan_key(x, numerator, denominator, impl, -1)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _new_cached_plan(key, x, numerator, denominator, impl, -1)
    return plan if isinstance(plan, Plan) else None


def group_rational_channels_first(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                                  *, impl: str = "auto") -> torch.Tensor:
    """``group_rational`` for ``(B, C, *spatial)`` tensors (channel axis 1), e.g. CNN feature maps."""
    if isinstance(x, torch.Tensor) and x.dim() < 2:
        raise ValueError(f"group_rational_channels_first: x must be (B, C, ...), got shape {tuple(x.shape)}")
    return group_rational(x, numerator, denominator, impl=impl, channel_dim=1)
