"""Host side of the fused group-rational op: launchers, torch.library custom ops, autograd.

``torch.ops.kat.group_rational_fwd`` / ``group_rational_bwd`` wrap the Triton launchers as opaque
custom ops with fake (meta) implementations, so ``torch.compile(fullgraph=True)`` traces through
them; ``GroupRationalFunction`` ties them together for autograd (``inline.py``: the same kernels
as ``triton_op``s Inductor launches itself, opt-in; ``plan.py``: the per-shape plans of the eager
fast path, built from the launchers here). The kernels are imported lazily so that ``import kat``
never imports Triton. ``KAT_AUTOTUNE``, ``KAT_UNIFORM``, ``KAT_FOLD``, ``KAT_COLS_FIRST`` and
``KAT_ONE_WAVE`` (and, in ``launch.py``, ``TRITON_INTERPRET`` and ``KAT_DIRECT_LAUNCH``) are read
when this module is imported (``import kat``): set them before that.
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch

from .launch import _INTERPRET, _cdiv, _launch_guard, _num_splits, _resident_programs
from .reduction import _Reduction
from .tuning import Tuner

__all__ = ["GroupRationalFunction", "Plan", "triton_available", "triton_supports", "MAX_ORDER"]

MAX_ORDER = (5, 4)  # (m, n) the kernels implement; lower orders are zero-padded
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Read once at import (plain globals keep torch.compile's tracing free of imports and env lookups).
# Triton itself decides between compiling and interpreting when the kernels module is imported.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
# KAT_AUTOTUNE=0 skips timing the kernel configs (each new shape then uses the first config);
# tests set it, since timing ~26 configs per new test shape dominates a GPU test run.
_AUTOTUNE = os.environ.get("KAT_AUTOTUNE", "1") != "0"
# KAT_UNIFORM=0 keeps the per-column coefficient loads even where a block lies in one group (A/B).
_UNIFORM_ON = os.environ.get("KAT_UNIFORM", "1") != "0"
# KAT_FOLD=0 keeps one backward accumulator per column even where a block lies in one group (A/B).
_FOLD_ON = os.environ.get("KAT_FOLD", "1") != "0"
# KAT_COLS_FIRST=0 launches the forward's programs rows first (the old order: A/B).
_COLS_FIRST_ON = os.environ.get("KAT_COLS_FIRST", "1") != "0"
# KAT_ONE_WAVE=0 sizes the backward's grid by the ~32-warps-per-SM guess instead of one full wave
# from the compiled kernel's occupancy (A/B).
_ONE_WAVE = os.environ.get("KAT_ONE_WAVE", "1") != "0"


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


# Backward kernels' occupancy, learned from the first compile of each (device, dtype, config,
# UNIFORM): key -> programs per SM (None where the compiled kernel does not say, e.g. an old Triton)
_RESIDENT: dict = {}


def _resident_key(x: torch.Tensor, cfg, group_size: int) -> tuple:
    return (x.device, x.dtype, tuple(cfg), _uniform(cfg[1], group_size))


def _should_learn(x: torch.Tensor, key) -> bool:
    """A backward config whose occupancy is still unknown, on a GPU, outside a CUDA graph capture
    (the graph would keep the extra learning launch and replay it every time)."""
    return x.is_cuda and _ONE_WAVE and key not in _RESIDENT and not torch.cuda.is_current_stream_capturing()


def _learn_resident(key, compiled, warps: int, device: torch.device) -> None:
    n_regs = getattr(compiled, "n_regs", None)
    shared = getattr(getattr(compiled, "metadata", None), "shared", None)
    if not isinstance(n_regs, int) or n_regs <= 0 or not isinstance(shared, int):
        _RESIDENT[key] = None
        return
    props = torch.cuda.get_device_properties(device)
    _RESIDENT[key] = _resident_programs(
        n_regs, shared, warps, getattr(props, "max_threads_per_multi_processor", 2048),
        getattr(props, "shared_memory_per_multiprocessor", 233472),
        getattr(props, "regs_per_multiprocessor", 65536))


_TUNER = Tuner(autotune=_AUTOTUNE)  # choices also kept on disk: see tuning.py


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


# The constexprs in the kernels' parameter order (direct launches pass them positionally).
# UNIFORM: every program's block of BLOCK_C channel-axis indices lies in one group (BLOCK_C divides
# the group size, hence C), so the kernels load the coefficients as scalars.
def _fwd_consts(cfg, group_size: int = 0, s: int = 0) -> dict:
    """Forward configs: (BLOCK_S, BLOCK_C, warps, SELECT); ``s`` (rows) decides the grid's order
    (see _cols_first), which ``_fwd_grid`` follows."""
    bs, bc, _warps, select = cfg
    return {"BLOCK_S": bs, "BLOCK_C": bc, "SELECT": select, "UNIFORM": _uniform(bc, group_size),
            "COLS_FIRST": _cols_first(s, cfg)}


def _cols_first(s: int, cfg) -> bool:
    """Whether the forward's grid puts column blocks on its first (fastest-launched) axis. The
    second axis holds at most 65535 blocks, so rows beyond 65535 row blocks keep rows first."""
    return _COLS_FIRST_ON and 0 < _cdiv(s, cfg[0]) <= 65535


def _bwd_consts(cfg, group_size: int = 0) -> dict:
    """Backward configs: (BLOCK_S, BLOCK_C, warps, ROW_REDUCE[, STAGES]); STAGES > 0 pipelines the
    tile loop's loads through shared memory (Triton's pipeliner), 0 (the default) prefetches in
    registers."""
    bs, bc, _warps, row_reduce, *rest = cfg
    return {"BLOCK_S": bs, "BLOCK_C": bc, "ROW_REDUCE": row_reduce, "ACC_ROWS": 1 if row_reduce else bs,
            "UNIFORM": _uniform(bc, group_size), "STAGES": rest[0] if rest else 0,
            "FOLD": _fold(cfg, group_size)}


def _fold(cfg, group_size: int) -> int:
    """Columns a backward thread sums into one accumulator per term (see kernels._accumulate): the
    config's sixth entry where the block lies in one group and keeps per-element accumulators,
    else 1 (no folding)."""
    bs, bc, _warps, row_reduce, *rest = cfg
    fold = rest[1] if len(rest) > 1 else 1
    return fold if fold > 1 and bc % fold == 0 and _FOLD_ON and not row_reduce and _uniform(bc, group_size) else 1


def _partial_columns(cfg, ca: int, group_size: int) -> int:
    """Columns of the backward's partial sums (splits, columns, NUM_ACC): one per channel-axis
    index, or one per block where the kernel folds a block's columns into one sum per term."""
    return ca // cfg[1] if _fold(cfg, group_size) > 1 else ca


def _bwd_candidates(group_size: int) -> list:
    """The backward configs worth timing at this group size: those asking to fold (a sixth entry)
    only where folding applies; elsewhere they would repeat their unfolded twin (a list of nothing
    but such configs is kept whole: they then run unfolded). With KAT_FOLD=0 all stay, so a tuning
    file's folding winner is found and runs unfolded: the A/B that switch is for)."""
    configs = _kernels().BWD_CONFIGS
    return [cfg for cfg in configs
            if len(cfg) < 6 or cfg[5] <= 1 or not _FOLD_ON or _fold(cfg, group_size) > 1] or configs


def _fwd_candidates(group_size: int) -> list:
    """The forward configs worth timing at this group size: blocks narrower than 32 columns only
    where their columns share one group (they exist for group sizes such as 24 and 48)."""
    configs = _kernels().FWD_CONFIGS
    return [cfg for cfg in configs if cfg[1] >= 32 or _uniform(cfg[1], group_size)] or configs


def _uniform(block_c: int, group_size: int) -> bool:
    return _UNIFORM_ON and group_size > 0 and group_size % block_c == 0


def _fwd_grid(s: int, ca: int, cfg) -> tuple:
    rows, cols = _cdiv(s, cfg[0]), _cdiv(ca, cfg[1])
    return (cols, rows) if _cols_first(s, cfg) else (rows, cols)


def _bwd_grid(x: torch.Tensor, s: int, ca: int, cfg, group_size: int = 0) -> tuple:
    """(splits, column blocks) for the backward at this config: one wave of the programs that fit
    on the GPU at once where that is known (see _launch_bwd), else the ~32-warps-per-SM guess."""
    blocks = _cdiv(ca, cfg[1])
    resident = _RESIDENT.get(_resident_key(x, cfg, group_size)) if x.device.type == "cuda" and _ONE_WAVE else None
    return (_num_splits(x, s, cfg[0], blocks, cfg[2], resident), blocks)


def _launch_fwd(x2, y2, a, b, a_stride, c, groups, cfg):
    """Forward through Triton's launcher on (S, CA) matrices x2 -> y2."""
    s, ca = x2.shape
    _kernels().group_rational_fwd_kernel[_fwd_grid(s, ca, cfg)](
        x2, y2, a, b, s, ca, c, c // groups, a_stride, *x2.stride(), *y2.stride(),
        **_fwd_consts(cfg, c // groups, s), num_warps=cfg[2])


def _launch_bwd(x2, g2, gx2, a, b, a_stride, c, groups, cfg) -> torch.Tensor:
    """Backward through Triton's launcher; returns the partial sums (splits, CA or CA / BLOCK_C
    where the kernel folds blocks, NUM_ACC)."""
    kernels = _kernels()
    s, ca = x2.shape
    key = _resident_key(x2, cfg, c // groups)
    learn = _should_learn(x2, key)
    for _ in range(2 if learn else 1):
        # First use of this compiled kernel on a GPU: one launch at the guessed grid compiles it and
        # tells its registers and shared memory; the launch that counts then runs at the grid of
        # one full wave. Learned before any result leaves, so the split count (and with it the
        # summation order of the coefficient gradients) is the same on every call.
        grid = _bwd_grid(x2, s, ca, cfg, c // groups)
        partial = torch.empty((grid[0], _partial_columns(cfg, ca, c // groups), kernels.NUM_ACC),
                              dtype=torch.float32, device=x2.device)
        compiled = kernels.group_rational_bwd_kernel[grid](
            x2, g2, gx2, a, b, partial, s, ca, c, c // groups, a_stride, grid[0],
            *x2.stride(), *g2.stride(), *gx2.stride(), **_bwd_consts(cfg, c // groups), num_warps=cfg[2])
        if learn and key not in _RESIDENT:
            _learn_resident(key, compiled, cfg[2], x2.device)
    return partial


def _forward(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
             channel_dim: int) -> torch.Tensor:
    channel_dim %= x.dim()
    y, y2 = _empty_matrix(x, channel_dim, _layout(x, channel_dim), x.dtype)
    if x.numel() == 0:
        return y
    _, x2, a, b, a_stride, c, groups = _operands(x, numerator, denominator, channel_dim)
    s, ca = x2.shape

    def launch(cfg):
        _launch_fwd(x2, y2, a, b, a_stride, c, groups, cfg)

    with _launch_guard(x):
        launch(_TUNER.pick(("fwd", x.device, x.dtype, s, ca, c, groups), _fwd_candidates(c // groups), launch))
    return y


# The custom ops' calls (what torch.compile'd code runs) use Plans too: a compiled graph calls the
# same shapes over and over, and without a plan every call would redo the layout checks, config
# lookups and Triton's argument binding. Only channels-last inputs whose rows collapse.
_OP_PLANS: dict = {}


def _op_plan(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, channel_dim: int):
    key = (x.shape, x.stride(), x.dtype, x.device, numerator.shape, numerator.dtype, denominator.shape,
           denominator.dtype, channel_dim % x.dim())
    plan = _OP_PLANS.get(key)
    if plan is None:
        plan = Plan(x, numerator, denominator) if key[-1] == x.dim() - 1 and _plannable(x) else False
        if len(_OP_PLANS) >= 4096:
            _OP_PLANS.clear()
        _OP_PLANS[key] = plan
    return plan


@torch.library.custom_op("kat::group_rational_fwd", mutates_args=())
def group_rational_fwd(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                       channel_dim: int) -> torch.Tensor:
    plan = _op_plan(x, numerator, denominator, channel_dim)
    if plan:
        return plan.forward(x, numerator, denominator)
    return _forward(x, numerator, denominator, channel_dim)


@group_rational_fwd.register_fake
def _(x, numerator, denominator, channel_dim):
    channel_dim %= x.dim()
    return _empty_matrix(x, channel_dim, _layout(x, channel_dim), x.dtype)[0]


def _backward(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
              denominator: torch.Tensor, channel_dim: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    channel_dim %= x.dim()
    layout, x2, a, b, a_stride, c, groups = _operands(x, numerator, denominator, channel_dim)
    gx, gx2 = _empty_matrix(x, channel_dim, layout, x.dtype)
    if x.numel() == 0:
        return gx, torch.zeros_like(numerator), torch.zeros_like(denominator)
    g2 = _as_matrix(grad_out, channel_dim, layout)
    s, ca = x2.shape

    def launch(cfg):
        return _launch_bwd(x2, g2, gx2, a, b, a_stride, c, groups, cfg)

    with _launch_guard(x):
        partial = launch(_TUNER.pick(("bwd", x.device, x.dtype, s, ca, c, groups), _bwd_candidates(c // groups),
                                     _with_reduction(launch, ca, c, groups, numerator, denominator)))
        red = _reduction_for(partial, ca, c, groups, numerator, denominator)
        return (gx, *red(partial, numerator, denominator))


def _reduction_for(partial, ca: int, c: int, groups: int, numerator, denominator) -> _Reduction:
    """The coefficient reduction for the backward's partial sums ``partial`` (splits, CA', NUM_ACC),
    read as (splits x outer copies, G, GS', NUM_ACC): CA' = CA and GS' = GS, or both divided by
    BLOCK_C where the kernel folded each block into one column."""
    outer = ca // c
    return _Reduction(partial.device, partial.shape[0] * outer, groups, partial.shape[1] // (outer * groups),
                      numerator.shape[1], denominator.shape[1], numerator.shape[0] == 1)


def _with_reduction(launch, ca: int, c: int, groups: int, numerator, denominator):
    """What the tuner times for a backward config: its kernel (``launch(cfg)`` returns the partial
    sums) and the coefficient reduction of those sums, whose size depends on the config (per-channel
    partial sums of a 1-warp config's ~700 splits are ~5 MB at C = 192, against 9.7 MB of bf16 x)."""
    reductions: dict = {}

    def run(cfg):
        partial = launch(cfg)
        red = reductions.get(partial.shape)
        if red is None:
            red = reductions[partial.shape] = _reduction_for(partial, ca, c, groups, numerator, denominator)
        red(partial, numerator, denominator, merged=False)  # timed in CUDA graphs: no counters
        return partial

    return run


@torch.library.custom_op("kat::group_rational_bwd", mutates_args=())
def group_rational_bwd(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                       denominator: torch.Tensor, channel_dim: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    plan = _op_plan(x, numerator, denominator, channel_dim)
    if plan:
        gx, ga, gb = plan.backward(grad_out, x, numerator, denominator)
    else:
        gx, ga, gb = _backward(grad_out, x, numerator, denominator, channel_dim)
    return gx, ga.contiguous(), gb.contiguous()  # the fake impl promises contiguous outputs


@group_rational_bwd.register_fake
def _(grad_out, x, numerator, denominator, channel_dim):
    channel_dim %= x.dim()
    gx = _empty_matrix(x, channel_dim, _layout(x, channel_dim), x.dtype)[0]
    return gx, torch.empty_like(numerator), torch.empty_like(denominator)


class GroupRationalFunction(torch.autograd.Function):
    """Autograd for the fused op on the general path (calls without a :class:`Plan`: channels
    first, rows that do not collapse to one stride; and every call under torch.compile, which
    traces the opaque custom ops). Saves only x and the coefficients; backward recomputes P and Q.
    Planned eager calls go through the plan's own Function (:func:`_plan_function`). No torch.amp
    decorators: the op computes in its input's dtype whether or not autocast is on (it has nothing
    autocast would cast), and its backward runs no autocast-eligible op, so recording and restoring
    the autocast state would only cost time.
    """

    @staticmethod
    def forward(ctx, x, numerator, denominator, channel_dim):
        ctx.save_for_backward(x, numerator, denominator)
        ctx.channel_dim = channel_dim
        if torch.compiler.is_compiling():
            # KAT_INLINE_TRITON=1: kernels Inductor launches itself (inline.py), where they apply
            ctx.inline = _inline.ENABLED and _inline.supported(x, channel_dim)
            if ctx.inline:
                return torch.ops.kat.group_rational_fwd_inline(x, numerator, denominator)
            return torch.ops.kat.group_rational_fwd(x, numerator, denominator, channel_dim)
        return _forward(x, numerator, denominator, channel_dim)

    @staticmethod
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        if torch.compiler.is_compiling():
            if getattr(ctx, "inline", False):
                gx, ga, gb = torch.ops.kat.group_rational_bwd_inline(grad_out, x, numerator, denominator)
            else:
                gx, ga, gb = torch.ops.kat.group_rational_bwd(
                    grad_out, x, numerator, denominator, ctx.channel_dim)
        else:
            gx, ga, gb = _backward(grad_out, x, numerator, denominator, ctx.channel_dim)
        return gx, ga, gb, None


from .plan import Plan, _plannable  # noqa: E402  (plans build on the launchers above)
from . import inline as _inline  # noqa: E402  (it builds on the plans)
