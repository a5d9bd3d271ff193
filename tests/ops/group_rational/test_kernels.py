"""The kernels' variants, each selected by a config (forward: SELECT, UNIFORM, grid order; backward:
ROW_REDUCE, STAGES, FOLD, UNIFORM), against the float64 formula and against each other where the
same arithmetic must give the same bits. Runs the real kernels on a GPU and Triton's interpreter
on the CPU."""
import pytest
import torch

import kat
from kat.ops.group_rational import tuning
from tests.ops.group_rational.conftest import only_plan
from tests.ops.group_rational.test_op import _check, _coeffs


def _same(u, v, device):
    """Bitwise in the interpreter; compiled kernels may contract multiply-adds at other places."""
    if device.type == "cpu":
        assert torch.equal(u, v)
    else:
        torch.testing.assert_close(u, v, rtol=4 * torch.finfo(u.dtype).eps, atol=1e-6)


@pytest.mark.parametrize("row_reduce", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_backward_accumulator_schemes(row_reduce, shared, device, configs):
    """ROW_REDUCE folds each tile's rows into per-column accumulators; both schemes give the
    float64 gradients (C = 200: non-power-of-two groups; a tail tile along the rows)."""
    cfg = (32, 64, 4, row_reduce) if row_reduce else (16, 64, 4, row_reduce)
    configs(bwd=[cfg])
    a, b = _coeffs(groups=8, shared=shared, device=device)
    x = torch.randn(3, 37, 200, device=device)
    _check("triton", x, a, b)
    assert only_plan(x, a, b).bwd_cfg == cfg


@pytest.mark.parametrize("row_reduce,channels_first,dtype", [
    (False, False, torch.bfloat16), (True, False, torch.bfloat16), (False, True, torch.float32)])
@pytest.mark.parametrize("c,groups", [(200, 8), (512, 8)])  # per-column coefficients; UNIFORM
def test_backward_pipelined_loads(c, groups, row_reduce, channels_first, dtype, device, configs):
    """STAGES > 0 (loads pipelined by Triton through shared memory) walks the same tiles in the same
    order as the register-prefetching loop: float64 agreement and the same results."""
    bc = 64 if (c // groups) % 64 == 0 else 32
    a, b = _coeffs(groups=groups, shared=False, device=device)
    x = torch.randn(3, c, 53, device=device, dtype=dtype) if channels_first else \
        torch.randn(3, 53, c, device=device, dtype=dtype)
    results = []
    for cfg in ((8, bc, 4, row_reduce, 3), (8, bc, 4, row_reduce)):
        configs(bwd=[cfg])
        assert tuning.bwd_consts(cfg, c // groups)["STAGES"] == (cfg[4] if len(cfg) > 4 else 0)
        results.append(_check("triton", x, a, b, channel_dim=1 if channels_first else -1))
    for u, v in zip(*results):
        _same(u, v, device)


_WIDE_FOLDS = [(16, 64, 4, False, 0, 8), (8, 32, 1, False, 3, 8)]
_NARROW_FOLDS = [(16, 8, 1, False, 3, 8), (32, 16, 4, False, 3, 8)]  # for group sizes 24, 48
_FOLD_SHAPES = [
    (512, 8, True, False, torch.float32),    # group size 64: one or two blocks per group
    (768, 8, False, False, torch.bfloat16),  # 96: three 32-wide blocks (the 64-wide config: no fold)
    (512, 4, True, True, torch.float32),     # (B, C, L): blocks of the B copies of a channel
]
_NARROW_SHAPES = [
    (192, 8, True, False, torch.bfloat16),   # 24 (KAT-T's act1): only the 8-wide block folds
    (384, 8, False, True, torch.float32),    # 48 (KAT-S's act1): 8 and 16 wide fold
]


@pytest.mark.parametrize("cfg,c,groups,shared,channels_first,dtype",
                         [(cfg, *shape) for cfg in _WIDE_FOLDS for shape in _FOLD_SHAPES]
                         + [(cfg, *shape) for cfg in _NARROW_FOLDS for shape in _NARROW_SHAPES])
def test_backward_folded_blocks(cfg, c, groups, shared, channels_first, dtype, device, configs):
    """FOLD (the config's sixth entry): where a block lies in one group each thread sums its FOLD
    neighbouring columns per term and the kernel writes one sum per block. Float64 agreement; y and
    grad_x the same as without folding (only the coefficient sums change order); the same
    coefficient gradients on every call."""
    gs = c // groups
    folds = tuning.fold(cfg, gs) > 1
    assert folds == (gs % cfg[1] == 0)
    a, b = _coeffs(groups=groups, shared=shared, device=device)
    x = torch.randn(3, c, 21, device=device, dtype=dtype) if channels_first else \
        torch.randn(2, 37, c, device=device, dtype=dtype)
    dim = 1 if channels_first else -1
    results = []
    for variant in (cfg, cfg[:5]):  # folded, then its unfolded twin
        configs(bwd=[variant])
        results.append(_check("triton", x, a, b, channel_dim=dim))
        partial = only_plan(x, a, b, dim).workspace.fresh()[0]
        outer = 1 if not channels_first else x.shape[0]
        columns = gs // cfg[1] if (folds and variant is cfg) else gs
        assert partial.shape[1:] == (outer * groups * columns, 10)
    folded, plain = results
    assert torch.equal(folded[0], plain[0])  # the same forward
    _same(folded[1], plain[1], device)
    configs(bwd=[cfg])
    again = _check("triton", x, a, b, channel_dim=dim)
    assert torch.equal(again[2], folded[2]) and torch.equal(again[3], folded[3])


@pytest.mark.parametrize("select,row_reduce", [(False, False), (True, True)])
@pytest.mark.parametrize("c,groups,shared,channels_first,dtype", [
    (512, 8, True, False, torch.float32),    # group size 64: one 64-wide block per group
    (1024, 8, False, False, torch.float32),  # 128: two blocks per group, per-group numerators
    (512, 4, False, True, torch.float32),    # (B, C, L) layout: blocks along B*C stay inside one group
    (512, 8, True, False, torch.bfloat16),
    (192, 8, True, False, torch.bfloat16),   # 24 per group: 8-wide blocks (KAT-T's act1)
    (384, 8, False, False, torch.float32),   # 48: 16-wide blocks (KAT-S's act1)
])
def test_group_uniform_blocks(c, groups, shared, channels_first, dtype, select, row_reduce, device, configs):
    """Where the block width divides the group size every program's channels share one group and
    the kernels load the coefficients as scalars (UNIFORM): float64 agreement, and the same output
    and grad_x as a block width whose programs gather per column."""
    gs = c // groups
    bc = next(w for w in (64, 32, 16, 8) if gs % w == 0)
    wide = 2 * gs if (2 * gs) & (2 * gs - 1) == 0 else 256  # spans groups: per-column coefficients
    dim = 1 if channels_first else -1
    x = torch.randn(3, c, 21, device=device, dtype=dtype) if channels_first else \
        torch.randn(2, 37, c, device=device, dtype=dtype)
    a, b = _coeffs(groups=groups, shared=shared, device=device)
    results = []
    for width in (bc, wide):
        fcfg, bcfg = (16, width, 4, select), (8, width, 4, row_reduce)
        configs(fwd=[fcfg], bwd=[bcfg])
        assert tuning.fwd_consts(fcfg, gs, 1)["UNIFORM"] == tuning.bwd_consts(bcfg, gs)["UNIFORM"] == (width == bc)
        results.append(_check("triton", x, a, b, channel_dim=dim))
    for u, v in zip(results[0][:2], results[1][:2]):
        _same(u, v, device)


@pytest.mark.parametrize("c,groups,dtype", [(200, 8, torch.float32), (768, 8, torch.bfloat16)])
def test_forward_grid_orders_agree(c, groups, dtype, device, configs, monkeypatch):
    """Both launch orders of the forward (column blocks first, and rows first, which more than
    65535 row blocks take) give the float64 formula's values and the same bits: every program
    computes the same tile either way. A tail tile along rows and columns (C = 200)."""
    x = torch.randn(3, 37, c, device=device, dtype=dtype)
    a, b = _coeffs(groups=groups, shared=False, device=device)
    results = []
    for order in (True, False):
        monkeypatch.setattr(tuning, "cols_first", lambda rows, cfg, order=order: order)
        configs(fwd=[(16, 64, 4, False)])
        results.append(_check("triton", x, a, b))
        grid = only_plan(x, a, b).fwd.grid
        assert grid[:2] == ((-(-c // 64), -(-111 // 16)) if order else (-(-111 // 16), -(-c // 64)))
    for u, v in zip(*results):
        assert torch.equal(u, v)


@pytest.mark.parametrize("select", [True, False])
def test_forward_overflow_variants(select, device, configs):
    """Where P or Q overflows fp32 the forward evaluates the scaled form: per element in both
    forms (SELECT) or in a row-by-row fix-up of the tiles that need it. Both give the reference's
    values (which does the same in PyTorch), including in tiles mixing huge, normal, NaN and Inf."""
    configs(fwd=[(64, 64, 4, select)])
    a, b = _coeffs(groups=8, shared=False, device=device)
    x = torch.randn(3, 37, 200, device=device)
    x[0, :5] = 1e30
    x[1, 3, 7] = -3e9
    x[2, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x[0, 6, 1] = float("nan")  # a NaN in the same tile as overflowed elements
    y = kat.group_rational(x, a, b, impl="triton")
    ref = kat.group_rational(x, a, b, impl="torch")
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.isfinite(y[0, :5]).all()  # the direct form alone would give NaN/Inf/0 there
    assert only_plan(x, a, b).fwd_cfg[3] == select
