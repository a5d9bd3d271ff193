"""The eager fast path: one :class:`Plan` per (shapes, strides, dtypes, device) of channels-last
calls whose rows collapse to one stride, built on first use (configs tuned, grids sized, launchers
bound), so that later calls only pass pointers. Also used by the custom ops that compiled graphs
call (``function._op_plan``) and by ``inline.py``."""
from __future__ import annotations

import torch

from .function import (_TUNER, _bwd_candidates, _bwd_consts, _bwd_grid, _fwd_candidates, _fwd_consts, _fwd_grid,
                       _kernels, _launch_bwd, _launch_fwd, _padded, _partial_columns, _resident_key,
                       _should_learn, _with_reduction)
from .launch import _Launch, _launch_guard
from .reduction import _Reduction, _Workspace

_current_device = torch._C._cuda_getDevice if hasattr(torch._C, "_cuda_getDevice") else (lambda: -1)


class Plan:
    """What the kernels need for calls on channels-last ``x`` of one shape, strides, dtype and
    device, with coefficients of one shape: the matrix view's strides, the tuned configs and their
    launchers. Per call, only the pointers change. Built on first use by ``group_rational``."""

    __slots__ = ("x_stride", "c", "a_stride", "x_args", "fwd", "bwd", "partial_shape", "red", "function", "index",
                 "workspace")

    def __init__(self, x, numerator, denominator):
        kernels = _kernels()
        c, groups = x.shape[-1], denominator.shape[0]
        x2 = x.view(-1, c)
        self.x_stride = x2.stride()  # the row stride of the view, whatever x's own strides say
        self.c = c
        self.index = x.device.index if x.is_cuda else None  # the GPU the launches must run on
        self.a_stride = 0 if numerator.shape[0] == 1 else 6
        s, gs = x2.shape[0], c // groups
        # Integer arguments after the pointers, fixed for the plan.
        self.x_args = (s, c, c, gs, self.a_stride)
        a, b = _padded(numerator, 6), _padded(denominator, 4)
        y2 = torch.empty_like(x2, memory_format=torch.contiguous_format)
        go2 = torch.empty_like(y2).normal_()
        with _launch_guard(x):
            fcfg = _TUNER.pick(("fwd", x.device, x.dtype, s, c, c, groups), _fwd_candidates(gs),
                               lambda cfg: _launch_fwd(x2, y2, a, b, self.a_stride, c, groups, cfg))
            bcfg = _TUNER.pick(("bwd", x.device, x.dtype, s, c, c, groups), _bwd_candidates(gs), _with_reduction(
                lambda cfg: _launch_bwd(x2, go2, y2, a, b, self.a_stride, c, groups, cfg), c, c, groups,
                numerator, denominator))
        self.fwd = _Launch(kernels.group_rational_fwd_kernel, _fwd_grid(s, c, fcfg), _fwd_consts(fcfg, gs, s), fcfg[2], 4)
        if _should_learn(x, _resident_key(x, bcfg, gs)):  # a config not timed here (tuning file, KAT_AUTOTUNE=0)
            with _launch_guard(x):
                _launch_bwd(x2, go2, y2, a, b, self.a_stride, c, groups, bcfg)
        grid = _bwd_grid(x, s, c, bcfg, gs)
        self.bwd = _Launch(kernels.group_rational_bwd_kernel, grid, _bwd_consts(bcfg, gs), bcfg[2], 6)
        # partial[p, g, j, k]: split p, group g, channel (or folded block) j of the group, term k
        gs_cols = _partial_columns(bcfg, c, gs) // groups
        self.partial_shape = (grid[0], groups, gs_cols, kernels.NUM_ACC)
        self.red = _Reduction(x.device, grid[0], groups, gs_cols, numerator.shape[1], denominator.shape[1],
                              numerator.shape[0] == 1)
        self.workspace = _Workspace(x.device, (self.partial_shape, self.red.scratch_shape))
        self.function = _plan_function(self)

    def _other_device(self) -> bool:
        """True when the current CUDA device is not the plan's (Triton launches on the current one);
        one raw query instead of building a device guard on every call."""
        return self.index is not None and _current_device() != self.index

    def forward(self, x, numerator, denominator, call=_Launch.__call__):
        """y; ``call(launch, *args)`` runs a launch (inline.py passes one that Inductor can trace)."""
        if self._other_device():
            with torch.cuda.device(self.index):
                return self.forward(x, numerator, denominator, call)
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        call(self.fwd, x, y, _padded(numerator, 6), _padded(denominator, 4), *self.x_args, *self.x_stride, self.c, 1)
        return y

    def backward(self, grad_out, x, numerator, denominator, call=_Launch.__call__, merged: bool = True):
        """(grad_x, grad_numerator, grad_denominator); ``call`` as in forward, ``merged`` as in
        :class:`_Reduction`."""
        if self._other_device():
            with torch.cuda.device(self.index):
                return self.backward(grad_out, x, numerator, denominator, call, merged)
        if not grad_out.is_contiguous():
            grad_out = grad_out.contiguous()
        gx = torch.empty_like(x, memory_format=torch.contiguous_format)
        # partial sums and the reduction's scratch: kept per stream for eager calls (merged), fresh
        # for the tuner's and traced graphs' (which own their memory)
        partial, scratch = self.workspace.get(keep=merged)
        call(self.bwd, x, grad_out, gx, _padded(numerator, 6), _padded(denominator, 4), partial,
             *self.x_args, self.partial_shape[0], *self.x_stride, self.c, 1, self.c, 1)
        return (gx, *self.red(partial, numerator, denominator, merged, call, scratch))


def _rows_collapse(shape, stride) -> bool:
    """``x.view(-1, C)`` works for a tensor of this shape and stride: the leading dims (size-1
    ones aside) nest like one contiguous block. Plain ints, so torch.compile's tracing can ask too."""
    lead = [(n, s) for n, s in zip(shape[:-1], stride[:-1]) if n != 1]
    return all(s0 == s1 * n1 for (_, s0), (n1, s1) in zip(lead, lead[1:]))


def _plannable(x: torch.Tensor) -> bool:
    """Rows that collapse to one stride (``x.view(-1, C)`` works) and something to compute."""
    return x.numel() > 0 and _rows_collapse(tuple(x.shape), x.stride())


def _plan_function(plan: Plan):
    """An autograd.Function bound to ``plan``: ``apply(x, numerator, denominator)``. The plan is
    reached through the closure, so no attribute is set on the autograd context and apply has no
    non-tensor arguments to sort out (a little host time per call; the garbage collector, counted
    on the H200, does not run during training steps either way)."""

    class PlannedGroupRational(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, numerator, denominator):
            ctx.save_for_backward(x, numerator, denominator)
            return plan.forward(x, numerator, denominator)

        @staticmethod
        def backward(ctx, grad_out):
            return plan.backward(grad_out, *ctx.saved_tensors)

    return PlannedGroupRational
