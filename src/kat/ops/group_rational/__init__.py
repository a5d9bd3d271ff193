"""The group-rational op: ``group_rational(x, numerator, denominator, *, impl="auto", channel_dim=-1)``.

``impl="torch"`` is the exact PyTorch reference (``reference.py``: any device, any float dtype);
``impl="triton"`` the fused kernels (CUDA, or the CPU under ``TRITON_INTERPRET=1``; float32, bfloat16,
float16; orders up to (5, 4)); ``impl="auto"`` takes the kernels for CUDA tensors they support and
the reference otherwise. Anatomy, bottom up: ``reference`` (also the form compiled graphs
record for it) -> ``kernels`` -> ``launch`` (launching, grids) -> ``tuning`` (configs)
-> ``reduction`` (coefficient gradients) -> ``plan`` (per-shape plans, the one cache) ->
``function`` (autograd, custom ops) -> this file.
"""
from __future__ import annotations

import logging

import torch

from .function import GroupRationalFunction, triton_available, triton_supports
from .plan import MAX_ORDER, cached, plan_for, plan_key, remember
from .reference import DecomposedRational, check_inputs, evaluate, group_rational_reference

__all__ = ["group_rational", "group_rational_channels_first", "group_rational_reference", "plan_for", "resolve",
           "triton_available", "triton_supports", "MAX_ORDER", "IMPLS"]

IMPLS = ("auto", "torch", "triton")
_REFERENCE = "torch"  # the cached decision of calls that run on the reference
_log = logging.getLogger(__name__)
_warned: set[str] = set()


def _resolve_impl(impl: str, x, numerator, denominator) -> str:
    if impl not in IMPLS:
        raise ValueError(f"group_rational: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch" or (impl == "auto" and x.device.type != "cuda"):
        return "torch"  # auto: the interpreter (TRITON_INTERPRET=1) is for tests, never a default
    reason = triton_supports(x, numerator, denominator)
    if impl == "triton":
        if reason is not None:
            raise ValueError(f"group_rational: impl='triton' cannot run this call: {reason}")
        return "triton"
    if reason is None:
        return "triton"
    if reason not in _warned:  # quietly taking the slow path on a GPU would surprise: say it once
        _warned.add(reason)
        _log.warning("group_rational: using the PyTorch reference on %s because %s", x.device, reason)
    return "torch"


def resolve(x, numerator, denominator, impl: str = "auto", channel_dim: int = -1) -> tuple[int, str]:
    """(channel axis >= 0, "torch" | "triton"): what a call with these arguments runs, raising
    TypeError/ValueError as ``group_rational`` does on invalid ones."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"group_rational: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("group_rational: x must have at least one dimension (the channels)")
    if not isinstance(channel_dim, int) or not -x.dim() <= channel_dim < x.dim():
        raise ValueError(f"group_rational: channel_dim={channel_dim} is out of range for x of shape "
                         f"{tuple(x.shape)}")
    cd = channel_dim % x.dim()
    check_inputs(x, numerator, denominator, cd)
    return cd, _resolve_impl(impl, x, numerator, denominator)


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
    if torch.compiler.is_compiling():  # traced once per graph: no cache, no Plan in the graph
        cd, chosen = resolve(x, numerator, denominator, impl, channel_dim)
        if chosen == "triton":
            return GroupRationalFunction.apply(x, numerator, denominator, None, cd)
        if getattr(torch.compiler, "is_exporting", lambda: False)():  # torch >= 2.5
            return evaluate(x, numerator, denominator, cd)  # its overflow-safe form behind one torch.cond
        return DecomposedRational.apply(x, numerator, denominator, cd)  # written-out backward (reference.py)
    try:
        key = plan_key(x, numerator, denominator, impl, channel_dim)
        plan = cached(key)
    except (AttributeError, TypeError):  # not tensors, or an unhashable argument: resolve says
        key = plan = None
    if plan is None:
        # validation, the implementation and the kernels' plan are decided once per key
        cd, chosen = resolve(x, numerator, denominator, impl, channel_dim)
        plan = _REFERENCE if chosen == "torch" else plan_for(x, numerator, denominator, cd)
        if key is not None:
            remember(key, plan)
    if plan is _REFERENCE:
        return evaluate(x, numerator, denominator, channel_dim % x.dim())
    if torch.is_grad_enabled() and (x.requires_grad or numerator.requires_grad or denominator.requires_grad):
        return GroupRationalFunction.apply(x, numerator, denominator, plan, plan.cd)
    return plan.forward(x, numerator, denominator)


def group_rational_channels_first(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                                  *, impl: str = "auto") -> torch.Tensor:
    """``group_rational`` for ``(B, C, *spatial)`` tensors (channel axis 1), e.g. CNN feature maps."""
    if isinstance(x, torch.Tensor) and x.dim() < 2:
        raise ValueError(f"group_rational_channels_first: x must be (B, C, ...), got shape {tuple(x.shape)}")
    return group_rational(x, numerator, denominator, impl=impl, channel_dim=1)
