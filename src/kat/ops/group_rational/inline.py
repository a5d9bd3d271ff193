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

from .function import _op_plan
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


def _traceable(launch, *args) -> None:
    """Runs ``launch`` (a plan's fixed kernel, grid and constexprs) through ``wrap_triton``, which
    Inductor traces into its graph and launches from its own code."""
    wrap_triton(launch.kernel)[launch.grid](*args, **launch.consts, num_warps=launch.num_warps)


if triton_op is not None:
    @triton_op("kat::group_rational_fwd_inline", mutates_args=())
    def group_rational_fwd_inline(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor
                                  ) -> torch.Tensor:
        return _plan(x, numerator, denominator).forward(x, numerator, denominator, call=_traceable)

    @triton_op("kat::group_rational_bwd_inline", mutates_args=())
    def group_rational_bwd_inline(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                                  denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the two-launch reduction: the one-launch form's counter would belong to the traced graph
        return _plan(x, numerator, denominator).backward(grad_out, x, numerator, denominator,
                                                         call=_traceable, merged=False)
