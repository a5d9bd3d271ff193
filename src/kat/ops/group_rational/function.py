"""Host side of the fused group-rational op: launchers, torch.library custom ops, autograd.

``torch.ops.kat.group_rational_fwd`` / ``group_rational_bwd`` wrap the Triton launchers as opaque
custom ops with fake (meta) implementations, so ``torch.compile(fullgraph=True)`` traces through
them; ``GroupRationalFunction`` ties them together for autograd. The kernels are imported lazily so
that ``import kat`` never imports Triton, and so that ``TRITON_INTERPRET`` set by a test before the
first call takes effect.
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch

from .reference import check_inputs

__all__ = ["GroupRationalFunction", "triton_available", "triton_supports", "MAX_ORDER"]

MAX_ORDER = (5, 4)  # (m, n) the kernels implement; lower orders are zero-padded
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Read once at import (plain globals keep torch.compile's tracing free of imports and env lookups).
# Triton itself decides between compiling and interpreting when the kernels module is imported.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """True when Triton is installed (needed for impl='triton')."""
    return _TRITON_INSTALLED


def _interpreting() -> bool:
    return _INTERPRET


def triton_supports(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> str | None:
    """None if the fused kernels can run this call, else the reason they cannot."""
    if not triton_available():
        return "Triton is not installed"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _interpreting()):
        return f"the kernels need a CUDA tensor (or TRITON_INTERPRET=1 on the CPU), got device {x.device}"
    if x.dtype not in _KERNEL_DTYPES:
        return f"the kernels take float32/float16/bfloat16 inputs, got {x.dtype}"
    m, n = numerator.shape[1] - 1, denominator.shape[1]
    if m > MAX_ORDER[0] or n > MAX_ORDER[1]:
        return f"the kernels implement orders up to (m, n) = {MAX_ORDER}, got ({m}, {n})"
    return None


# ---------------------------------------------------------------------------------------------
# Layout: every tensor is seen as a matrix (S, CA) whose column ca belongs to channel ca % C.

def _layout(x: torch.Tensor, channel_dim: int) -> str:
    """'last': channels are the innermost axis in memory (rows x C); 'first': (outer*C, L) contiguous."""
    inner = math.prod(x.shape[channel_dim + 1:])
    if inner == 1 or x.movedim(channel_dim, -1).is_contiguous():
        return "last"
    return "first"


def _as_matrix(t: torch.Tensor, channel_dim: int, layout: str) -> torch.Tensor:
    c = t.shape[channel_dim]
    if layout == "last":
        return t.movedim(channel_dim, -1).reshape(-1, c)  # a view whenever the strides allow
    outer = math.prod(t.shape[:channel_dim])
    return t.contiguous().view(outer * c, -1).t()


def _empty_matrix(like: torch.Tensor, channel_dim: int, layout: str, dtype: torch.dtype):
    """Allocate the full output tensor and its (S, CA) matrix view for ``layout``."""
    if layout == "last":
        moved = list(like.shape)
        moved.append(moved.pop(channel_dim))
        full = torch.empty(moved, dtype=dtype, device=like.device)
        return full.movedim(-1, channel_dim), full.view(-1, like.shape[channel_dim])
    full = torch.empty(like.shape, dtype=dtype, device=like.device)
    outer = math.prod(like.shape[:channel_dim])
    return full, full.view(outer * like.shape[channel_dim], -1).t()


def _padded(coef: torch.Tensor, width: int) -> torch.Tensor:
    coef = coef.detach().to(torch.float32)
    if coef.shape[1] < width:
        coef = torch.nn.functional.pad(coef, (0, width - coef.shape[1]))
    return coef.contiguous()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _num_splits(x: torch.Tensor, s: int, ca: int) -> int:
    """Programs along the stream axis in backward: about 4 per SM for 128-wide channel blocks.

    Independent of the autotuned block sizes, so the partial buffer's shape is known up front; its
    size stays near 4 * SMs * 128 * 10 floats whatever C is.
    """
    if x.device.type == "cuda":
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    else:
        sms = 2
    return max(1, min(_cdiv(s, 16), _cdiv(4 * sms, _cdiv(ca, 128))))


def _launch_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else _nullcontext()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _kernels():
    from . import kernels  # lazy: see the module docstring
    return kernels


# ---------------------------------------------------------------------------------------------
# Custom ops

@torch.library.custom_op("kat::group_rational_fwd", mutates_args=())
def group_rational_fwd(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                       channel_dim: int) -> torch.Tensor:
    kernels = _kernels()
    channel_dim %= x.dim()
    layout = _layout(x, channel_dim)
    y, y2 = _empty_matrix(x, channel_dim, layout, x.dtype)
    if x.numel() == 0:
        return y
    x2 = _as_matrix(x, channel_dim, layout)
    c, groups = x.shape[channel_dim], denominator.shape[0]
    a, b = _padded(numerator, 6), _padded(denominator, 4)
    a_stride = 0 if numerator.shape[0] == 1 else 6
    s, ca = x2.shape

    def grid(meta):
        return (_cdiv(s, meta["BLOCK_S"]), _cdiv(ca, meta["BLOCK_C"]))

    with _launch_guard(x):
        kernels.group_rational_fwd_kernel[grid](
            x2, y2, a, b, s, ca, c, c // groups, a_stride,
            x2.stride(0), x2.stride(1), y2.stride(0), y2.stride(1))
    return y


@group_rational_fwd.register_fake
def _(x, numerator, denominator, channel_dim):
    channel_dim %= x.dim()
    return _empty_matrix(x, channel_dim, _layout(x, channel_dim), x.dtype)[0]


@torch.library.custom_op("kat::group_rational_bwd", mutates_args=())
def group_rational_bwd(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                       denominator: torch.Tensor, channel_dim: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernels = _kernels()
    channel_dim %= x.dim()
    layout = _layout(x, channel_dim)
    gx, gx2 = _empty_matrix(x, channel_dim, layout, x.dtype)
    c, groups = x.shape[channel_dim], denominator.shape[0]
    if x.numel() == 0:
        return gx, torch.zeros_like(numerator), torch.zeros_like(denominator)
    x2 = _as_matrix(x, channel_dim, layout)
    g2 = _as_matrix(grad_out, channel_dim, layout)
    a, b = _padded(numerator, 6), _padded(denominator, 4)
    a_stride = 0 if numerator.shape[0] == 1 else 6
    s, ca = x2.shape
    splits = _num_splits(x, s, ca)
    partial = torch.empty((splits, ca, kernels.NUM_ACC), dtype=torch.float32, device=x.device)

    def grid(meta):
        return (splits, _cdiv(ca, meta["BLOCK_C"]))

    with _launch_guard(x):
        kernels.group_rational_bwd_kernel[grid](
            x2, g2, gx2, a, b, partial, s, ca, c, c // groups, a_stride, splits,
            x2.stride(0), x2.stride(1), g2.stride(0), g2.stride(1), gx2.stride(0), gx2.stride(1))
    # Fixed-order reduction: splits, then the outer copies of each channel, then the channels of a group.
    per_channel = partial.sum(0).view(-1, c, kernels.NUM_ACC).sum(0)
    per_group = per_channel.view(groups, c // groups, kernels.NUM_ACC).sum(1)
    m1, n = numerator.shape[1], denominator.shape[1]
    grad_num = per_group[:, :m1]
    if numerator.shape[0] == 1:
        grad_num = grad_num.sum(0, keepdim=True)
    # d|b|/db = sign(b) with sign(0) = +1 (reference.py explains why)
    sign_b = torch.where(denominator.detach() < 0, -1.0, 1.0).to(torch.float32)
    grad_den = per_group[:, 6:6 + n] * sign_b
    return gx, grad_num.to(numerator.dtype), grad_den.to(denominator.dtype)


@group_rational_bwd.register_fake
def _(grad_out, x, numerator, denominator, channel_dim):
    channel_dim %= x.dim()
    gx = _empty_matrix(x, channel_dim, _layout(x, channel_dim), x.dtype)[0]
    return gx, torch.empty_like(numerator), torch.empty_like(denominator)


class GroupRationalFunction(torch.autograd.Function):
    """Autograd for the fused op. Saves only x and the coefficients; backward recomputes P and Q."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, numerator, denominator, channel_dim):
        ctx.save_for_backward(x, numerator, denominator)
        ctx.channel_dim = channel_dim
        return torch.ops.kat.group_rational_fwd(x, numerator, denominator, channel_dim)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        gx, ga, gb = torch.ops.kat.group_rational_bwd(
            grad_out, x, numerator, denominator, ctx.channel_dim)
        return gx, ga, gb, None


def fused_group_rational(x, numerator, denominator, channel_dim: int) -> torch.Tensor:
    """Validated entry to the fused path (the caller has checked ``triton_supports``)."""
    check_inputs(x, numerator, denominator, channel_dim)
    return GroupRationalFunction.apply(x, numerator, denominator, channel_dim)
