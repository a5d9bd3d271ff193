"""Host side of the fused group-rational op: launchers, torch.library custom ops, autograd.

``torch.ops.kat.group_rational_fwd`` / ``group_rational_bwd`` wrap the Triton launchers as opaque
custom ops with fake (meta) implementations, so ``torch.compile(fullgraph=True)`` traces through
them; ``GroupRationalFunction`` ties them together for autograd. The kernels are imported lazily so
that ``import kat`` never imports Triton. ``TRITON_INTERPRET`` and ``KAT_AUTOTUNE`` are read when
this module is imported (``import kat``): set them before that.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os

import torch


__all__ = ["GroupRationalFunction", "triton_available", "triton_supports", "MAX_ORDER"]

MAX_ORDER = (5, 4)  # (m, n) the kernels implement; lower orders are zero-padded
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Read once at import (plain globals keep torch.compile's tracing free of imports and env lookups).
# Triton itself decides between compiling and interpreting when the kernels module is imported.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# KAT_AUTOTUNE=0 skips timing the kernel configs (each new shape then uses the first config);
# tests set it, since timing ~26 configs per new test shape dominates a GPU test run.
_AUTOTUNE = os.environ.get("KAT_AUTOTUNE", "1") != "0"


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
    if channel_dim == x.dim() - 1:
        return "last"
    inner = math.prod(x.shape[channel_dim + 1:])
    if inner == 1 or x.movedim(channel_dim, -1).is_contiguous():
        return "last"
    return "first"


def _as_matrix(t: torch.Tensor, channel_dim: int, layout: str) -> torch.Tensor:
    c = t.shape[channel_dim]
    if layout == "last" and channel_dim == t.dim() - 1:
        return t.reshape(-1, c)  # a view whenever the strides allow
    if layout == "last":
        return t.movedim(channel_dim, -1).reshape(-1, c)
    outer = math.prod(t.shape[:channel_dim])
    return t.contiguous().view(outer * c, -1).t()


def _empty_matrix(like: torch.Tensor, channel_dim: int, layout: str, dtype: torch.dtype):
    """Allocate the full output tensor and its (S, CA) matrix view for ``layout``."""
    if layout == "last" and channel_dim == like.dim() - 1:
        full = torch.empty(like.shape, dtype=dtype, device=like.device)
        return full, full.view(-1, like.shape[-1])
    if layout == "last":
        moved = list(like.shape)
        moved.append(moved.pop(channel_dim))
        full = torch.empty(moved, dtype=dtype, device=like.device)
        return full.movedim(-1, channel_dim), full.view(-1, like.shape[channel_dim])
    full = torch.empty(like.shape, dtype=dtype, device=like.device)
    outer = math.prod(like.shape[:channel_dim])
    return full, full.view(outer * like.shape[channel_dim], -1).t()


def _padded(coef: torch.Tensor, width: int) -> torch.Tensor:
    if coef.dtype == torch.float32 and coef.shape[1] == width and coef.is_contiguous():
        return coef  # the common case: nothing to do (the kernels only read it)
    coef = coef.detach().to(torch.float32)
    if coef.shape[1] < width:
        coef = torch.nn.functional.pad(coef, (0, width - coef.shape[1]))
    return coef.contiguous()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_splits(x: torch.Tensor, s: int, block_s: int, blocks: int, warps: int) -> int:
    """Programs along the stream axis in backward: enough for ~32 resident warps per SM, never more
    than there are stream tiles."""
    sms = _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device()) \
        if x.device.type == "cuda" else 2
    return max(1, min(_cdiv(s, block_s), _cdiv(sms * max(1, 32 // warps), blocks)))


class _Tuner:
    """Picks a kernel config per shape key by timing the candidates once (CUDA events), then reuses
    it. Unlike triton.autotune, the host knows the chosen tile, which fixes the backward grid and
    the size of its partial-sum buffer."""

    def __init__(self):
        self.cache: dict = {}

    def pick(self, key, configs, launch):
        cfg = self.cache.get(key)
        if cfg is not None:
            return cfg
        if len(configs) == 1 or key[1].type != "cuda" or not _AUTOTUNE:
            cfg = configs[0]
        else:
            from triton.testing import do_bench
            best = None
            for candidate in configs:
                try:
                    ms = do_bench(lambda: launch(candidate), warmup=5, rep=20, return_mode="median")
                except Exception:  # out of registers / shared memory on this GPU: skip it
                    continue
                if best is None or ms < best[0]:
                    best = (ms, candidate)
            if best is None:
                raise RuntimeError(f"group_rational: no kernel config runs for {key}")
            cfg = best[1]
        self.cache[key] = cfg
        return cfg


_TUNER = _Tuner()


def _launch_guard(x: torch.Tensor):
    """Launch on x's GPU (Triton launches on the current device)."""
    if x.device.type == "cuda" and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _kernels():
    from . import kernels  # lazy: see the module docstring
    return kernels


# ---------------------------------------------------------------------------------------------
# Custom ops

def _operands(x, numerator, denominator, channel_dim):
    """What both kernels take: the layout, x as its (S, CA) matrix, kernel-ready coefficients."""
    layout = _layout(x, channel_dim)
    a, b = _padded(numerator, 6), _padded(denominator, 4)
    a_stride = 0 if numerator.shape[0] == 1 else 6
    c, groups = x.shape[channel_dim], denominator.shape[0]
    return layout, _as_matrix(x, channel_dim, layout), a, b, a_stride, c, groups


def _forward(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
             channel_dim: int) -> torch.Tensor:
    kernels = _kernels()
    channel_dim %= x.dim()
    y, y2 = _empty_matrix(x, channel_dim, _layout(x, channel_dim), x.dtype)
    if x.numel() == 0:
        return y
    _, x2, a, b, a_stride, c, groups = _operands(x, numerator, denominator, channel_dim)
    s, ca = x2.shape

    def launch(cfg):
        bs, bc, warps = cfg
        kernels.group_rational_fwd_kernel[(_cdiv(s, bs), _cdiv(ca, bc))](
            x2, y2, a, b, s, ca, c, c // groups, a_stride,
            x2.stride(0), x2.stride(1), y2.stride(0), y2.stride(1),
            BLOCK_S=bs, BLOCK_C=bc, num_warps=warps)

    with _launch_guard(x):
        launch(_TUNER.pick(("fwd", x.device, x.dtype, s, ca, c, groups), kernels.FWD_CONFIGS, launch))
    return y


@torch.library.custom_op("kat::group_rational_fwd", mutates_args=())
def group_rational_fwd(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                       channel_dim: int) -> torch.Tensor:
    return _forward(x, numerator, denominator, channel_dim)


@group_rational_fwd.register_fake
def _(x, numerator, denominator, channel_dim):
    channel_dim %= x.dim()
    return _empty_matrix(x, channel_dim, _layout(x, channel_dim), x.dtype)[0]


def _backward(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
              denominator: torch.Tensor, channel_dim: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernels = _kernels()
    channel_dim %= x.dim()
    layout, x2, a, b, a_stride, c, groups = _operands(x, numerator, denominator, channel_dim)
    gx, gx2 = _empty_matrix(x, channel_dim, layout, x.dtype)
    if x.numel() == 0:
        return gx, torch.zeros_like(numerator), torch.zeros_like(denominator)
    g2 = _as_matrix(grad_out, channel_dim, layout)
    s, ca = x2.shape

    def launch(cfg):
        bs, bc, warps = cfg
        blocks = _cdiv(ca, bc)
        splits = _num_splits(x, s, bs, blocks, warps)
        partial = torch.empty((splits, ca, kernels.NUM_ACC), dtype=torch.float32, device=x.device)
        kernels.group_rational_bwd_kernel[(splits, blocks)](
            x2, g2, gx2, a, b, partial, s, ca, c, c // groups, a_stride, splits,
            x2.stride(0), x2.stride(1), g2.stride(0), g2.stride(1), gx2.stride(0), gx2.stride(1),
            BLOCK_S=bs, BLOCK_C=bc, num_warps=warps)
        return partial

    with _launch_guard(x):
        partial = launch(_TUNER.pick(("bwd", x.device, x.dtype, s, ca, c, groups), kernels.BWD_CONFIGS, launch))
    # Deterministic reductions (no atomics) over splits, outer copies of a channel and the channels
    # of a group; the kernel has already applied sign(b) to the denominator terms.
    m1, n = numerator.shape[1], denominator.shape[1]
    per_group = partial.view(partial.shape[0], -1, groups, c // groups, kernels.NUM_ACC).sum(dim=(0, 1, 3))
    grad_num = per_group[:, :m1]
    if numerator.shape[0] == 1:
        grad_num = grad_num.sum(0, keepdim=True)
    grad_den = per_group[:, 6:6 + n]
    return gx, grad_num.to(numerator.dtype), grad_den.to(denominator.dtype)


@torch.library.custom_op("kat::group_rational_bwd", mutates_args=())
def group_rational_bwd(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                       denominator: torch.Tensor, channel_dim: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gx, ga, gb = _backward(grad_out, x, numerator, denominator, channel_dim)
    return gx, ga.contiguous(), gb.contiguous()  # the fake impl promises contiguous outputs


@group_rational_bwd.register_fake
def _(grad_out, x, numerator, denominator, channel_dim):
    channel_dim %= x.dim()
    gx = _empty_matrix(x, channel_dim, _layout(x, channel_dim), x.dtype)[0]
    return gx, torch.empty_like(numerator), torch.empty_like(denominator)


class GroupRationalFunction(torch.autograd.Function):
    """Autograd for the fused op. Saves only x and the coefficients; backward recomputes P and Q.

    Under torch.compile the opaque custom ops are traced; in eager mode the launchers are called
    directly, skipping the custom-op dispatch (tens of microseconds a call).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, numerator, denominator, channel_dim):
        ctx.save_for_backward(x, numerator, denominator)
        ctx.channel_dim = channel_dim
        if torch.compiler.is_compiling():
            return torch.ops.kat.group_rational_fwd(x, numerator, denominator, channel_dim)
        return _forward(x, numerator, denominator, channel_dim)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        if torch.compiler.is_compiling():
            gx, ga, gb = torch.ops.kat.group_rational_bwd(
                grad_out, x, numerator, denominator, ctx.channel_dim)
        else:
            gx, ga, gb = _backward(grad_out, x, numerator, denominator, ctx.channel_dim)
        return gx, ga, gb, None

