"""The fused op for ``torch.compile`` as ``torch.library.triton_op``s (opt-in: ``KAT_INLINE_TRITON=1``).

The default custom ops (``kat::group_rational_fwd`` / ``_bwd``) are opaque to Inductor: each call in
a compiled graph goes back to Python (the dispatcher, our plan lookup, our launcher). Measured on
the H200, compiled KAT-T then trains at only ~0.6x compiled ViT-T in Inductor's default mode, and
on the CPU machine (kernels stubbed out) those calls cost 86-117 us per rational forward +
backward (scripts/compiled_host_cpu.py).
Here the same kernels, at the same tuned configs and grids (the eager :class:`Plan` for the shape),
are ``wrap_triton`` calls inside ``triton_op``s, so Inductor sees the kernels and launches them
from its generated code like its own. The coefficient reduction runs as its two launches (the
one-launch form keeps a counter in device memory that a traced graph should not own).

Plans are built when the graph is traced: with fake tensors, from real tensors of the same shapes
made for the purpose (tuning times real kernels). Only channels-last calls with static shapes whose
rows collapse take this path; GroupRationalFunction sends everything else to the opaque ops.
"""
from __future__ import annotations

import os

import torch

from .function import _op_plan, _padded
from .plan import _rows_collapse

ENABLED = os.environ.get("KAT_INLINE_TRITON", "0") == "1"

try:
    from torch.library import triton_op, wrap_triton
except ImportError:  # PyTorch < 2.6
    triton_op = wrap_triton = None


def supported(x: torch.Tensor, channel_dim: int) -> bool:
    """Calls the inline ops take: static shapes, channels last, rows that collapse to one stride."""
    if triton_op is None or channel_dim % x.dim() != x.dim() - 1:
        return False
    shape, stride = tuple(x.shape), tuple(x.stride())
    if any(not isinstance(v, int) for v in (*shape, *stride)):
        return False  # symbolic sizes: a plan is per concrete shape
    return 0 not in shape and _rows_collapse(shape, stride)


def _plan(x, numerator, denominator):
    """The eager plan for these shapes; under tracing (fake tensors) built from real ones, outside
    every dispatch mode (fake, functional, proxy), so that nothing of it enters the graph."""
    from torch._subclasses.fake_tensor import is_fake
    from torch.utils._python_dispatch import _disable_current_modes
    if not any(is_fake(t) for t in (x, numerator, denominator)):
        return _op_plan(x, numerator, denominator, -1)
    with _disable_current_modes():
        xr = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device).normal_()
        nr = (torch.randn(numerator.shape, device=x.device) * 0.3).to(numerator.dtype)
        dr = (torch.randn(denominator.shape, device=x.device) * 0.3).to(denominator.dtype)
        return _op_plan(xr, nr, dr, -1)


def _kernel_args(launch) -> dict:
    return dict(launch.consts, num_warps=launch.num_warps)


if triton_op is not None:
    @triton_op("kat::group_rational_fwd_inline", mutates_args=())
    def group_rational_fwd_inline(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor
                                  ) -> torch.Tensor:
        plan = _plan(x, numerator, denominator)
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        fwd = plan.fwd
        wrap_triton(fwd.kernel)[fwd.grid](x, y, _padded(numerator, 6), _padded(denominator, 4), *plan.x_args,
                                          *plan.x_stride, plan.c, 1, **_kernel_args(fwd))
        return y

    @triton_op("kat::group_rational_bwd_inline", mutates_args=())
    def group_rational_bwd_inline(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                                  denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        plan = _plan(x, numerator, denominator)
        grad_out = grad_out.contiguous()
        gx = torch.empty_like(x, memory_format=torch.contiguous_format)
        partial = torch.empty(plan.partial_shape, dtype=torch.float32, device=x.device)
        a, b = _padded(numerator, 6), _padded(denominator, 4)
        bwd = plan.bwd
        wrap_triton(bwd.kernel)[bwd.grid](x, grad_out, gx, a, b, partial, *plan.x_args, plan.partial_shape[0],
                                          *plan.x_stride, plan.c, 1, plan.c, 1, **_kernel_args(bwd))
        red = plan.red
        scratch = torch.empty((red.rs, red.groups, 16), dtype=torch.float32, device=x.device)
        gnum = torch.empty((1 if red.shared else red.groups, red.num_m), dtype=torch.float32, device=x.device)
        gden = torch.empty((red.groups, red.num_n), dtype=torch.float32, device=x.device)
        # FINISH is off in this launch: the counter argument is never read, any fp32 buffer will do
        wrap_triton(red.partials.kernel)[red.partials.grid](
            partial, scratch, scratch, gnum, gden, red.rows, red.groups, red.gs, red.per, red.num_m, red.num_n,
            **_kernel_args(red.partials))
        wrap_triton(red.final.kernel)[red.final.grid](
            scratch, gnum, gden, red.rs, red.groups, red.num_m, red.num_n, **_kernel_args(red.final))
        return gx, gnum.to(numerator.dtype), gden.to(denominator.dtype)
