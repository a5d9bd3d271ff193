"""Plans: everything about a call of the kernels that depends only on its arguments' shapes, strides,
dtypes and device, decided once and kept in the op's one cache (``cached``/``remember``, keyed by
``plan_key``). A :class:`Plan` holds the matrix view the kernels see, the chosen configs and the
bound launchers; per call, only pointers change.

Layouts: channels last, or any channel axis whose other axes collapse to one row stride (e.g. a
channels_last image batch), runs as (rows, C); other channel axes as the contiguous (B, C, L)
tensor's (L, B*C). Inputs that fit neither are copied into that form; outputs are always in it.
"""
from __future__ import annotations

import math

import torch

from .launch import Launcher, cdiv, device_of, num_splits, resident_of
from .reduction import Reduction, Workspace
from .tuning import Tuner, bwd_candidates, bwd_consts, fold, fwd_candidates, fwd_consts

MAX_ORDER = (5, 4)  # (m, n) the kernels implement; lower orders are zero-padded
TUNER = Tuner()

_PLANS: dict = {}
_current_device = getattr(torch._C, "_cuda_getDevice", lambda: -1)


def plan_key(x, numerator, denominator, impl: str, channel_dim: int) -> tuple:
    """The cache key of a call: the implementation asked for and everything a plan depends on."""
    return (impl, channel_dim, x.shape, x.stride(), x.dtype, x.device, numerator.shape, numerator.dtype,
            numerator.device, denominator.shape, denominator.dtype, denominator.device)


def cached(key):
    return _PLANS.get(key)


def remember(key, plan):
    if len(_PLANS) >= 4096:  # many distinct shapes: start over rather than grow without bound
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def plan_for(x, numerator, denominator, channel_dim: int) -> "Plan":
    """The kernels' plan for valid arguments (``channel_dim`` non-negative), cached."""
    key = plan_key(x, numerator, denominator, "triton", channel_dim)
    plan = _PLANS.get(key)
    return plan if plan is not None else remember(key, Plan(x, numerator, denominator, channel_dim))


def padded(coef: torch.Tensor, width: int) -> torch.Tensor:
    """Coefficients as the kernels read them: float32, contiguous, zero-padded to ``width`` terms."""
    if coef.dtype == torch.float32 and coef.shape[1] == width and coef.is_contiguous():
        return coef
    coef = coef.detach().to(torch.float32)
    if coef.shape[1] < width:
        coef = torch.nn.functional.pad(coef, (0, width - coef.shape[1]))
    return coef.contiguous()


def row_view(t: torch.Tensor, cd: int):
    """(rows, row stride) where the axes other than ``cd`` collapse to one stride, else None.
    Plain loops over ints: torch.compile traces this (``layernorm_rational``)."""
    rows, stride, inner = 1, t.shape[cd], None
    for i in range(t.dim() - 1, -1, -1):  # innermost first
        n = t.shape[i]
        if i == cd or n == 1:
            continue
        if inner is not None and t.stride(i) != inner:
            return None
        if inner is None:
            stride = t.stride(i)
        inner = t.stride(i) * n
        rows *= n
    return rows, stride


def rows_layout(x: torch.Tensor, cd: int) -> bool:
    """True where the kernels see ``x`` as (rows, C), False for (L, B*C) (see the module docstring)."""
    return cd == x.dim() - 1 or row_view(x, cd) is not None


def empty_output(x: torch.Tensor, cd: int, rows: bool) -> torch.Tensor:
    """A new tensor of x's shape and dtype in the kernels' output layout (channels innermost in
    memory for the rows layout, contiguous otherwise)."""
    if not rows or cd == x.dim() - 1:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    shape = list(x.shape)
    shape.append(shape.pop(cd))
    return torch.empty(shape, dtype=x.dtype, device=x.device).movedim(-1, cd)


class Plan:
    """The kernels' calls on ``x`` of one shape, strides, dtype and device along ``channel_dim``,
    with coefficients of one shape: ``forward`` -> y, ``backward`` -> (grad_x, grad_numerator,
    grad_denominator)."""

    __slots__ = ("cd", "last", "rows_layout", "copy", "index", "numel", "fwd", "fwd_args", "bwd",
                 "bwd_args", "red", "workspace", "fwd_cfg", "bwd_cfg")

    def __init__(self, x, numerator, denominator, channel_dim: int):
        from . import kernels  # lazy: see launch.py
        cd, c, groups = channel_dim, x.shape[channel_dim], denominator.shape[0]
        gs = c // groups
        self.cd, self.numel, self.last = cd, x.numel(), cd == x.dim() - 1
        self.index = x.device.index if x.is_cuda else None
        view = row_view(x, cd)
        self.rows_layout = cd == x.dim() - 1 or view is not None
        self.copy = not (view is not None if self.rows_layout else x.is_contiguous())
        if not self.numel:
            return
        xk = self.operand(x)
        if self.rows_layout:
            s, ca = self.numel // c, c
            x_strides = (c, 1) if self.copy else (view[1], x.stride(cd))
            out_strides = (c, 1)
        else:
            s, ca = math.prod(x.shape[cd + 1:]), math.prod(x.shape[:cd + 1])
            x_strides = out_strides = (1, s)
        a_stride = 0 if numerator.shape[0] == 1 else 6
        a, b = padded(numerator, 6), padded(denominator, 4)
        ints = (s, ca, c, gs, a_stride)
        self.fwd_args = (*ints, *x_strides, *out_strides)
        y = self.empty(x)
        go = torch.randn_like(y)

        def time_fwd(cfg):
            consts = fwd_consts(cfg, gs, s)
            kernels.group_rational_fwd_kernel[_fwd_grid(s, ca, cfg, consts)](
                xk, y, a, b, *self.fwd_args, **consts, num_warps=cfg[2])

        made: dict = {}

        def time_bwd(cfg):  # the kernel and the coefficient reduction of its partial sums
            if cfg not in made:  # built in do_bench_cudagraph's warm-up call, outside its capture
                made[cfg] = self._backward_launch(kernels, cfg, xk, go, y, a, b, ints, x_strides, out_strides,
                                                  numerator, denominator)
            launch, red, shape = made[cfg]
            partial = torch.empty(shape, dtype=torch.float32, device=x.device)
            launch(xk, go, y, a, b, partial, *ints, launch.grid[0], *x_strides, *out_strides, *out_strides)
            red(partial, numerator, denominator, merged=False)

        with device_of(x):
            self.fwd_cfg = TUNER.pick(("fwd", x.device, x.dtype, s, ca, c, groups), fwd_candidates(x.device, gs),
                                      time_fwd)
            self.bwd_cfg = TUNER.pick(("bwd", x.device, x.dtype, s, ca, c, groups), bwd_candidates(x.device, gs),
                                      time_bwd)
            self.bwd, self.red, partial_shape = self._backward_launch(
                kernels, self.bwd_cfg, xk, go, y, a, b, ints, x_strides, out_strides, numerator, denominator)
        consts = fwd_consts(self.fwd_cfg, gs, s)
        self.fwd = Launcher(kernels.group_rational_fwd_kernel, _fwd_grid(s, ca, self.fwd_cfg, consts), consts,
                            self.fwd_cfg[2], 4)
        self.bwd_args = (*ints, self.bwd.grid[0], *x_strides, *out_strides, *out_strides)
        self.workspace = Workspace(x.device, (partial_shape, self.red.scratch_shape))

    @staticmethod
    def _backward_launch(kernels, cfg, x, go, gx, a, b, ints, x_strides, out_strides, numerator, denominator):
        """(launcher, reduction, partial-sum shape) for backward config ``cfg``. On a GPU, outside a
        graph capture, one launch at a guessed grid compiles the kernel and tells how many of its
        programs fit on an SM; the launcher then covers the GPU in exactly one wave."""
        s, ca, c, gs, _ = ints
        blocks = cdiv(ca, cfg[1])
        consts = bwd_consts(cfg, gs)
        cols = ca // cfg[1] if fold(cfg, gs) > 1 else ca  # folded: one partial per block

        def shape(splits):
            return (splits, cols, kernels.NUM_ACC)

        launch = Launcher(kernels.group_rational_bwd_kernel,
                          (num_splits(x.device, s, cfg[0], blocks, cfg[2]), blocks), consts, cfg[2], 6)
        if x.is_cuda and not torch.cuda.is_current_stream_capturing():
            partial = torch.empty(shape(launch.grid[0]), dtype=torch.float32, device=x.device)
            compiled = launch(x, go, gx, a, b, partial, *ints, launch.grid[0], *x_strides, *out_strides, *out_strides)
            resident = resident_of(compiled, cfg[2], x.device)
            if resident:
                grid = (num_splits(x.device, s, cfg[0], blocks, cfg[2], resident), blocks)
                launch = Launcher(launch.kernel, grid, consts, cfg[2], 6, compiled=launch.compiled)
        splits = launch.grid[0]
        # partial[p, g, j, k], read per channel copy: split p (x outer copies), group g, column j, term k
        red = Reduction(x.device, splits * (ca // c), c // gs, cols // (ca // c) // (c // gs),
                        numerator.shape[1], denominator.shape[1], numerator.shape[0] == 1)
        return launch, red, shape(splits)

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (x's shape) with strides the kernels' matrix view can read: itself, or a copy."""
        if not self.copy:
            return t
        if self.rows_layout:
            return t.movedim(self.cd, -1).contiguous().movedim(-1, self.cd)
        return t.contiguous()

    def empty(self, like: torch.Tensor) -> torch.Tensor:
        if self.last:  # the common case, in the cheapest call
            return torch.empty_like(like, memory_format=torch.contiguous_format)
        return empty_output(like, self.cd, self.rows_layout)

    def _like_output(self, t: torch.Tensor) -> torch.Tensor:
        if (t.movedim(self.cd, -1) if self.rows_layout and not self.last else t).is_contiguous():
            return t
        out = self.empty(t)
        out.copy_(t)
        return out

    def forward(self, x, numerator, denominator):
        if self.index is not None and _current_device() != self.index:
            with torch.cuda.device(self.index):  # Triton launches on the current device
                return self.forward(x, numerator, denominator)
        y = self.empty(x)
        if self.numel:
            self.fwd(self.operand(x), y, padded(numerator, 6), padded(denominator, 4), *self.fwd_args)
        return y

    def backward(self, grad_out, x, numerator, denominator):
        if self.index is not None and _current_device() != self.index:
            with torch.cuda.device(self.index):
                return self.backward(grad_out, x, numerator, denominator)
        gx = self.empty(x)
        if not self.numel:
            return gx, torch.zeros_like(numerator), torch.zeros_like(denominator)
        partial, scratch = self.workspace.get()
        self.bwd(self.operand(x), self._like_output(grad_out), gx, padded(numerator, 6), padded(denominator, 4),
                 partial, *self.bwd_args)
        return (gx, *self.red(partial, numerator, denominator, scratch))


def _fwd_grid(s: int, ca: int, cfg, consts) -> tuple:
    rows, cols = cdiv(s, cfg[0]), cdiv(ca, cfg[1])
    return (cols, rows) if consts["COLS_FIRST"] else (rows, cols)
