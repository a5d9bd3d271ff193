"""The eager fast path of group_rational (kat.ops.group_rational.function.Plan): per-shape plans,
direct launches on the GPU, and both accumulator schemes of the backward kernel. Everything is
checked against the float64 formula or, where the same kernels run, against the general path
bit for bit."""
import importlib

import pytest
import torch

import kat
from kat.ops.group_rational import function as fn
from kat.ops.group_rational import kernels
from kat.ops.group_rational import launch as launching
from kat.ops.group_rational import plan as planning
from kat.ops.group_rational import reduction
from tests.helpers import formula64, rel_err
from tests.ops.test_group_rational import _check, _coeffs

gr = importlib.import_module("kat.ops.group_rational")  # the package (kat.ops re-exports the function)


def _grads(x, a, b, go, **kw):
    x, a, b = (t.detach().requires_grad_() for t in (x, a, b))
    y = kat.group_rational(x, a, b, impl="triton", **kw)
    return (y, *torch.autograd.grad(y, (x, a, b), go))


@pytest.fixture
def fresh_plans():
    gr._PLANS.clear()
    fn._TUNER.cache.clear()
    yield
    gr._PLANS.clear()
    fn._TUNER.cache.clear()


@pytest.mark.parametrize("row_reduce", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_backward_accumulator_schemes(row_reduce, shared, device, monkeypatch, fresh_plans):
    """ROW_REDUCE folds each tile's rows into per-column accumulators; both schemes give the
    float64 gradients (C = 200: non-power-of-two groups; a tail tile along the rows)."""
    configs = [c for c in kernels.BWD_CONFIGS if c[3] == row_reduce]
    assert configs, "the config list must offer both accumulator schemes"
    monkeypatch.setattr(kernels, "BWD_CONFIGS", configs)
    a, b = _coeffs(groups=8, shared=shared, device=device)
    x = torch.randn(3, 37, 200, device=device)
    _check("triton", x, a, b)
    key = next(k for k in fn._TUNER.cache if k[0] == "bwd")
    assert fn._TUNER.cache[key][3] == row_reduce


@pytest.mark.parametrize("row_reduce,channels_first,dtype", [
    (False, False, torch.bfloat16), (True, False, torch.bfloat16), (False, True, torch.float32)])
@pytest.mark.parametrize("c,groups", [(200, 8), (512, 8)])  # per-column coefficients; UNIFORM
def test_backward_pipelined_loads(c, groups, row_reduce, channels_first, dtype, device, monkeypatch,
                                  fresh_plans):
    """STAGES > 0 (loads pipelined by Triton through shared memory) walks the same tiles in the same
    order as the register-prefetching loop: float64 agreement, and the same results as STAGES = 0
    (bitwise in the interpreter; compiled, to 4 ulps: FMA contraction may differ)."""
    bc = 64 if (c // groups) % 64 == 0 else 32
    a, b = _coeffs(groups=groups, shared=False, device=device)
    # 159 rows: a tail tile; channels-first (B, C, L): the stream axis is L, contiguous
    x = torch.randn(3, c, 53, device=device, dtype=dtype) if channels_first else \
        torch.randn(3, 53, c, device=device, dtype=dtype)
    results = []
    for cfg in ((8, bc, 4, row_reduce, 3), (8, bc, 4, row_reduce)):
        monkeypatch.setattr(kernels, "BWD_CONFIGS", [cfg])
        gr._PLANS.clear()
        fn._TUNER.cache.clear()
        assert fn._bwd_consts(cfg, c // groups)["STAGES"] == (cfg[4] if len(cfg) > 4 else 0)
        results.append(_check("triton", x, a, b, channel_dim=1) if channels_first else _check("triton", x, a, b))
    for u, v in zip(*results):
        if device.type == "cpu":
            assert torch.equal(u, v)
        else:
            torch.testing.assert_close(u, v, rtol=4 * torch.finfo(u.dtype).eps, atol=1e-6)


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
def test_backward_folded_blocks(cfg, c, groups, shared, channels_first, dtype, device, monkeypatch,
                                fresh_plans):
    """FOLD (the config's sixth entry): where a block lies in one group each thread sums its FOLD
    neighbouring columns per term and the kernel writes one sum per block, so the partial sums have
    one column per block. Float64 agreement; y and (in the interpreter) grad_x bit for bit as
    without folding (only the coefficient sums change order); the same coefficient gradients on
    every call."""
    gs = c // groups
    folds = fn._fold(cfg, gs) > 1
    assert folds == (gs % cfg[1] == 0)
    a, b = _coeffs(groups=groups, shared=shared, device=device)
    x = torch.randn(3, c, 21, device=device, dtype=dtype) if channels_first else \
        torch.randn(2, 37, c, device=device, dtype=dtype)
    dim = 1 if channels_first else -1
    results = []
    for variant in (cfg, cfg[:5]):  # folded, then its unfolded twin
        monkeypatch.setattr(kernels, "BWD_CONFIGS", [variant])
        gr._PLANS.clear()
        fn._TUNER.cache.clear()
        results.append(_check("triton", x, a, b, channel_dim=dim))
        if not channels_first:
            plan = next(p for p in gr._PLANS.values() if isinstance(p, fn.Plan))
            columns = gs // cfg[1] if (folds and variant is cfg) else gs
            assert plan.partial_shape[1:3] == (groups, columns)
    folded, plain = results
    assert torch.equal(folded[0], plain[0])  # the same forward
    if device.type == "cpu":  # the interpreter: the same arithmetic for grad_x
        assert torch.equal(folded[1], plain[1])
    else:  # compiled: FMA contraction may differ between the two kernels
        torch.testing.assert_close(folded[1], plain[1], rtol=4 * torch.finfo(dtype).eps, atol=1e-6)
    monkeypatch.setattr(kernels, "BWD_CONFIGS", [cfg])
    gr._PLANS.clear()
    fn._TUNER.cache.clear()
    again = _check("triton", x, a, b, channel_dim=dim)
    assert torch.equal(again[2], folded[2]) and torch.equal(again[3], folded[3])


def test_fold_configs_are_timed_only_where_they_fold(monkeypatch):
    """A config asking to fold is a candidate only at group sizes its block width divides (else it
    would repeat its unfolded twin and cost tuning time). Checked on the GPU's candidate list (the
    interpreter's own list has no folding configs)."""
    monkeypatch.setattr(kernels, "BWD_CONFIGS", kernels.GPU_BWD_CONFIGS)
    fold_cfgs = [cfg for cfg in kernels.BWD_CONFIGS if len(cfg) > 5 and cfg[5] > 1]
    assert fold_cfgs
    for gs in (24, 96, 384):
        candidates = fn._bwd_candidates(gs)
        for cfg in fold_cfgs:
            assert (cfg in candidates) == (gs % cfg[1] == 0)
        assert all(cfg in candidates for cfg in kernels.BWD_CONFIGS if len(cfg) < 6)
    assert any(cfg in fn._bwd_candidates(96) for cfg in fold_cfgs)  # C = 768: 96 per group


def test_backward_tuning_times_the_kernel_with_its_reduction(monkeypatch, device):
    """What the tuner times for a backward config is the kernel and the coefficient reduction of
    its partial sums (their size depends on the config); the reduction is built once per partial
    shape and the kernel's partial sums are what the timed call returns."""
    x = torch.randn(3, 20, 64, device=device)
    a, b = _coeffs(device=device)
    built, ran = [], []

    class Recording:
        def __init__(self, partial, *args):
            built.append(tuple(partial.shape))

        def __call__(self, partial, numerator, denominator, merged=True):
            assert not merged  # the tuner's graphs must not take counters from the pool
            ran.append(tuple(partial.shape))

    monkeypatch.setattr(fn, "_reduction_for", Recording)
    x2, go2, gx2 = x.view(-1, 64), torch.randn(60, 64, device=device), torch.empty(60, 64, device=device)
    launch = lambda cfg: fn._launch_bwd(x2, go2, gx2, a, b, 0, 64, 8, cfg)  # noqa: E731
    timed = fn._with_reduction(launch, 64, 64, 8, a, b)
    configs = [(8, 64, 4, False), (8, 64, 4, False), (4, 32, 1, False)]
    outs = [timed(cfg) for cfg in configs]
    assert ran == [tuple(p.shape) for p in outs] and len(built) == len({tuple(p.shape) for p in outs})
    assert torch.equal(outs[0], outs[1])  # the same config, the same partial sums


def test_narrow_forward_configs_are_timed_only_where_uniform(monkeypatch):
    """Forward blocks narrower than 32 columns exist for group sizes no 32-wide block divides
    (24, 48): candidates only where their columns share one group, and there are such at 24 and 48."""
    monkeypatch.setattr(kernels, "FWD_CONFIGS", kernels.GPU_FWD_CONFIGS)
    narrow = [cfg for cfg in kernels.FWD_CONFIGS if cfg[1] < 32]
    assert narrow
    for gs in (24, 48, 96, 384):
        candidates = fn._fwd_candidates(gs)
        assert all((cfg in candidates) == (gs % cfg[1] == 0) for cfg in narrow)
        assert all(cfg in candidates for cfg in kernels.FWD_CONFIGS if cfg[1] >= 32)
    assert any(cfg in fn._fwd_candidates(24) for cfg in narrow)
    assert any(cfg[1] == 16 for cfg in fn._fwd_candidates(48))
    monkeypatch.setattr(kernels, "BWD_CONFIGS", kernels.GPU_BWD_CONFIGS)
    for gs in (24, 48):  # and the backward has folding configs there
        assert any(fn._fold(cfg, gs) > 1 for cfg in fn._bwd_candidates(gs))


def test_fold_off_keeps_fold_configs_as_candidates(monkeypatch):
    """KAT_FOLD=0: a config that folds elsewhere stays a candidate and runs unfolded, so a tuning
    file's choice is found again (the A/B compares the same config folded and not)."""
    monkeypatch.setattr(fn, "_FOLD_ON", False)
    cfg = (16, 64, 4, False, 0, 8)
    assert fn._fold(cfg, 384) == 1 and fn._bwd_consts(cfg, 384)["FOLD"] == 1
    monkeypatch.setattr(kernels, "BWD_CONFIGS", [(8, 64, 4, False), cfg])
    assert fn._bwd_candidates(384) == [(8, 64, 4, False), cfg]


@pytest.mark.parametrize("select,row_reduce", [(False, False), (True, True)])
@pytest.mark.parametrize("c,groups,shared,channels_first,dtype", [
    (512, 8, True, False, torch.float32),    # group size 64: one 64-wide block per group
    (1024, 8, False, False, torch.float32),  # 128: two blocks per group, per-group numerators
    (512, 4, False, True, torch.float32),    # (B, C, L) layout: blocks along B*C stay inside one group
    (512, 8, True, False, torch.bfloat16),
    (192, 8, True, False, torch.bfloat16),   # 24 per group: 8-wide blocks (KAT-T's act1)
    (384, 8, False, False, torch.float32),   # 48: 16-wide blocks (KAT-S's act1)
])
def test_group_uniform_blocks(c, groups, shared, channels_first, dtype, select, row_reduce, device,
                              monkeypatch, fresh_plans):
    """Where the block width divides the group size every program's channels share one group and the
    kernels load the coefficients as scalars (UNIFORM): same float64 agreement as the per-column
    path, and the per-column path (KAT_UNIFORM=0) gives bit-identical results."""
    # One config per kernel, of this variant, with a block width that divides the group size (the
    # device's tuning lists need not hold one for every variant: on the GPU no SELECT config is 64 wide)
    bc = next(w for w in (64, 32, 16, 8) if (c // groups) % w == 0)
    monkeypatch.setattr(kernels, "FWD_CONFIGS", [(16, bc, 4, select)])
    monkeypatch.setattr(kernels, "BWD_CONFIGS", [(8, bc, 4, row_reduce)])
    assert fn._fwd_consts(kernels.FWD_CONFIGS[0], c // groups)["UNIFORM"]
    assert fn._bwd_consts(kernels.BWD_CONFIGS[0], c // groups)["UNIFORM"]
    a, b = _coeffs(groups=groups, shared=shared, device=device)
    if channels_first:
        x = torch.randn(3, c, 21, device=device, dtype=dtype)
        got = _check("triton", x, a, b, channel_dim=1)
    else:
        x = torch.randn(2, 37, c, device=device, dtype=dtype)
        got = _check("triton", x, a, b)
    monkeypatch.setattr(fn, "_UNIFORM_ON", False)  # as KAT_UNIFORM=0 at import
    assert not fn._fwd_consts(kernels.FWD_CONFIGS[0], c // groups)["UNIFORM"]
    gr._PLANS.clear()
    fn._TUNER.cache.clear()
    per_column = _check("triton", x, a, b, channel_dim=1 if channels_first else -1)
    for u, v in zip(got, per_column):
        if device.type == "cpu":  # the interpreter: same arithmetic, same summation order, same bits
            assert torch.equal(u, v)
        else:  # compiled, the two variants may contract multiply-adds into FMAs at different places
            torch.testing.assert_close(u, v, rtol=4 * torch.finfo(u.dtype).eps, atol=1e-6)


def test_forward_grid_order_rule(monkeypatch):
    """Column blocks go on the forward grid's first axis while the row blocks fit the second axis's
    65535; the grid and the kernel's COLS_FIRST constant always agree."""
    cfg = (8, 32, 2, False)
    for s, cols_first in ((1, True), (8 * 65535, True), (8 * 65535 + 1, False), (0, False)):
        assert fn._cols_first(s, cfg) == cols_first
        assert fn._fwd_consts(cfg, 96, s)["COLS_FIRST"] == cols_first
        rows, cols = -(-s // 8), 768 // 32
        assert fn._fwd_grid(s, 768, cfg) == ((cols, rows) if cols_first else (rows, cols))
    monkeypatch.setattr(fn, "_COLS_FIRST_ON", False)  # as KAT_COLS_FIRST=0 at import
    assert not fn._cols_first(8, cfg) and fn._fwd_grid(8, 768, cfg) == (1, 24)


@pytest.mark.parametrize("c,groups,dtype", [(200, 8, torch.float32), (768, 8, torch.bfloat16)])
def test_forward_grid_orders_agree(c, groups, dtype, device, monkeypatch, fresh_plans):
    """Both launch orders of the forward (column blocks first, the default, and rows first, what
    more than 65535 row blocks take) give the float64 formula's values and the same bits: every
    program computes the same tile either way. A tail tile along rows and columns (C = 200)."""
    x = torch.randn(3, 37, c, device=device, dtype=dtype)
    a, b = _coeffs(groups=groups, shared=False, device=device)
    monkeypatch.setattr(kernels, "FWD_CONFIGS", [(16, 64, 4, False)])
    results = []
    for order in (True, False):
        monkeypatch.setattr(fn, "_COLS_FIRST_ON", order)
        gr._PLANS.clear()
        fn._TUNER.cache.clear()
        results.append(_check("triton", x, a, b))
    for u, v in zip(*results):
        assert torch.equal(u, v)


@pytest.mark.parametrize("select", [True, False])
def test_forward_overflow_variants(select, device, monkeypatch, fresh_plans):
    """Where P or Q overflows fp32 the forward evaluates the scaled form: per element in both
    forms (SELECT) or in a row-by-row fix-up of the tiles that need it. Both give the reference's
    values (which does the same in PyTorch), including in tiles mixing huge, normal, NaN and Inf."""
    configs = [c for c in kernels.FWD_CONFIGS if c[3] == select]
    assert configs, "the config list must offer both forward variants"
    monkeypatch.setattr(kernels, "FWD_CONFIGS", configs)
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
    key = next(k for k in fn._TUNER.cache if k[0] == "fwd")
    assert fn._TUNER.cache[key][3] == select


def test_plan_matches_general_path(device, fresh_plans):
    """The plan launches the same kernels at the same configs and reduces the partial sums the
    same way as the general path: every result agrees bit for bit."""
    a, b = _coeffs(groups=8, shared=False, device=device)
    x = torch.randn(2, 50, 64, device=device)
    go = torch.randn_like(x)
    y, gx, ga, gb = _grads(x, a, b, go)
    assert any(isinstance(p, fn.Plan) for p in gr._PLANS.values()), "the fast path did not run"
    y2 = fn._forward(x, a, b, 2)
    gx2, ga2, gb2 = fn._backward(go, x, a, b, 2)
    assert torch.equal(y, y2) and torch.equal(gx, gx2)
    assert torch.equal(ga, ga2) and torch.equal(gb, gb2)


def test_plan_without_grad_and_row_strided_input(device, fresh_plans):
    a, b = _coeffs(device=device)
    big = torch.randn(6, 40, 96, device=device)
    x = big[:, ::2]  # every other row: one row stride (2C), still an (S, C) view
    assert not x.is_contiguous()
    with torch.no_grad():
        y = kat.group_rational(x, a, b, impl="triton")
    assert y.grad_fn is None
    ry = formula64(x, a, b, torch.ones_like(x), -1)[0]
    assert rel_err(y, ry) <= 1e-5
    assert any(isinstance(p, fn.Plan) for p in gr._PLANS.values())


def test_plan_expanded_grad_out(device, fresh_plans):
    """y.sum().backward() hands backward an expanded (stride-0) gradient."""
    a, b = _coeffs(device=device)
    x = torch.randn(4, 10, 32, device=device, requires_grad=True)
    kat.group_rational(x, a, b, impl="triton").sum().backward()
    rgx = formula64(x.detach(), a, b, torch.ones_like(x), -1)[1]
    assert rel_err(x.grad, rgx) <= 1e-5


def test_cached_calls_still_validate(device, fresh_plans):
    """A cached plan never skips a check: anything the checks look at is part of the key."""
    a, b = _coeffs(device=device)
    x = torch.randn(2, 5, 16, device=device)
    kat.group_rational(x, a, b, impl="triton")
    with pytest.raises(ValueError, match="device"):
        kat.group_rational(x, a.to("meta"), b, impl="triton")
    with pytest.raises(TypeError, match="floating"):
        kat.group_rational(x, a, b.to(torch.int32), impl="triton")
    with pytest.raises(ValueError, match="divisible"):
        kat.group_rational(torch.randn(2, 5, 12, device=device), a, b, impl="triton")
    with pytest.raises(ValueError, match="divisible"):  # twice: errors are not cached away
        kat.group_rational(torch.randn(2, 5, 12, device=device), a, b, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        kat.group_rational(x, a, b, impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        kat.group_rational(x, a, b, impl=["triton"])  # unhashable: still the impl message
    with pytest.raises(TypeError, match="numerator"):
        kat.group_rational(x, a.numpy() if a.device.type == "cpu" else a.cpu().numpy(), b, impl="triton")


def test_autocast_keeps_input_dtype(device, fresh_plans):
    """Nothing in the op is cast by autocast: fp32 in, fp32 out and fp32 gradients, equal to the
    result without autocast."""
    a, b = _coeffs(device=device)
    x = torch.randn(3, 7, 64, device=device)
    go = torch.randn_like(x)
    plain = _grads(x, a, b, go)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        under = _grads(x, a, b, go)
    for p, u in zip(plain, under):
        assert u.dtype == p.dtype == torch.float32
        assert torch.equal(p, u)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="direct launches exist on CUDA only")
def test_direct_launch_is_used_and_exact(fresh_plans, monkeypatch):
    monkeypatch.setattr(launching, "_DIRECT", True)  # on by default; KAT_DIRECT_LAUNCH=0 turns it off
    a, b = _coeffs(device="cuda")
    x = torch.randn(8, 197, 192, device="cuda", dtype=torch.bfloat16)
    go = torch.randn_like(x)
    first = _grads(x, a, b, go)
    plan = next(p for p in gr._PLANS.values() if isinstance(p, fn.Plan))
    assert plan.fwd.compiled is not None and plan.bwd.compiled is not None
    second = _grads(x, a, b, go)  # direct launches
    for f, s in zip(first, second):
        assert torch.equal(f, s)
    # an unaligned view (offset by one element) takes Triton's own launch path and is still right
    xo = torch.randn(8 * 197 * 192 + 1, device="cuda", dtype=torch.bfloat16)[1:].view_as(x)
    y = kat.group_rational(xo, a, b, impl="triton")
    assert rel_err(y, formula64(xo, a, b, torch.ones_like(xo), -1)[0]) <= 1e-2


def test_direct_launch_falls_back_when_the_launcher_rejects_the_call(monkeypatch):
    """A Triton whose launcher takes other arguments raises TypeError before launching: that launch
    and every later one go through Triton's own path, and direct launches are off for the process."""
    monkeypatch.setattr(launching, "_DIRECT", True)
    monkeypatch.setattr(launching, "_launch_hooks_set", lambda: False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 0, raising=False)
    jit_calls = []

    class Kernel:  # stands in for a JITFunction: kernel[grid](*args, **consts, num_warps=...)
        def __getitem__(self, grid):
            return lambda *args, **kw: jit_calls.append((grid, args, kw))

    class Rejecting:  # a CompiledKernel whose launcher has another signature
        function = packed_metadata = None

        def run(self, *args):
            raise TypeError("launcher() takes 12 positional arguments")

    launch = launching._Launch(Kernel(), (3, 2), {"BLOCK_S": 8}, 4, n_ptr=1)
    launch.compiled = Rejecting()
    x = torch.zeros(16)
    launch(x, 5)
    assert launching._DIRECT is False and launch.compiled is None
    assert jit_calls == [((3, 2, 1), (x, 5), {"BLOCK_S": 8, "num_warps": 4})]
    launch(x, 5)  # stays on Triton's path
    assert len(jit_calls) == 2 and launch.compiled is None


@pytest.mark.parametrize("grid,expected", [((7,), (7, 1, 1)), ((3, 2), (3, 2, 1)), ((2, 3, 4), (2, 3, 4))])
def test_direct_launch_passes_all_three_grid_dimensions(monkeypatch, grid, expected):
    """The launcher takes (gx, gy, gz): a 1-D grid, as the coefficient reduction's final program and
    the fused LayerNorm kernels use, launches as (n, 1, 1). (On the H200 a 1-D grid once raised
    IndexError here, which the CPU tests could not see.)"""
    monkeypatch.setattr(launching, "_DIRECT", True)
    monkeypatch.setattr(launching, "_launch_hooks_set", lambda: False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 0, raising=False)
    launched = []

    class Compiled:
        function = packed_metadata = None

        def run(self, gx, gy, gz, stream, *rest):
            launched.append(((gx, gy, gz), rest[5:]))

    launch = launching._Launch(None, grid, {"BLOCK": 16}, 4, n_ptr=1)
    launch.compiled = Compiled()
    x = torch.zeros(16)
    launch(x, 5)
    # the pointer goes as its integer address (the launcher then skips its per-pointer driver
    # query), the other arguments and the constants as given
    assert launched == [(expected, (x.data_ptr(), 5, 16))]


def test_direct_launch_takes_triton_path_for_unaligned_pointers(monkeypatch):
    """The compiled binary assumed 16-byte aligned pointers; a pointer off that alignment (a view at
    an odd offset) goes through Triton's own launch, which specialises for it."""
    monkeypatch.setattr(launching, "_DIRECT", True)
    monkeypatch.setattr(launching, "_launch_hooks_set", lambda: False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 0, raising=False)
    direct, jit = [], []

    class Compiled:
        function = packed_metadata = None

        def run(self, *a):
            direct.append(a)

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kw: jit.append(args)

    launch = launching._Launch(Kernel(), (2,), {"BLOCK": 16}, 4, n_ptr=2)
    launch.compiled = Compiled()
    base = torch.zeros(64)
    aligned, odd = base[:16], base[1:17]
    assert aligned.data_ptr() % 16 == 0 and odd.data_ptr() % 16 != 0
    launch(aligned, aligned, 3)
    launch(aligned, odd, 3)
    assert len(direct) == 1 and jit == [(aligned, odd, 3)]


def test_launch_grid_of_no_or_four_dimensions_is_refused():
    for grid in ((), (1, 2, 3, 4)):
        with pytest.raises(ValueError, match="1 to 3 dimensions"):
            launching._Launch(None, grid, {}, 4, n_ptr=1)


def test_launch_hooks_disable_direct_launches():
    """A profiler's launch hook must see every launch: with a hook installed the launcher goes
    through Triton's own path; an empty hook chain (Triton >= 3.5's default) counts as none."""
    knobs = pytest.importorskip("triton.knobs")
    chain = knobs.runtime.launch_enter_hook
    if not hasattr(chain, "add"):
        pytest.skip("this Triton keeps launch hooks as plain attributes")
    assert not launching._launch_hooks_set()

    def hook(metadata):
        pass

    chain.add(hook)
    try:
        assert launching._launch_hooks_set()
    finally:
        chain.remove(hook)
    assert not launching._launch_hooks_set()


@pytest.mark.parametrize("rows,groups,gs,shared,sms", [
    (37, 96, 2, True, 2),      # more groups than one final-program block: the group loop runs twice
    (37, 96, 2, False, 2),
    (50, 1, 200, True, 2),     # 200 channels in one group: four channel blocks per row block
    (352, 8, 24, True, 132),   # H200-sized: 33 row blocks, final block of 64 rows, 2 group blocks
    (352, 8, 24, False, 132),
    (22, 8, 384, False, 132),  # KAT-B's fc1 output width (3072 = 8 x 384)
    (5, 3, 7, True, 2),        # fewer rows than a row block
])
def test_coefficient_reduction_matches_a_float64_sum(rows, groups, gs, shared, sms, device):
    """The two reduction launches sum the backward's partials exactly as a float64 sum does (up to
    fp32 rounding), per group or over all groups for a shared numerator, for every order <= (5, 4),
    and give bitwise the same result on every call."""
    torch.manual_seed(rows + groups)
    partial = torch.randn(rows, groups, gs, kernels.NUM_ACC, device=device)  # the interpreter on a CPU
    for m1, n in ((6, 4), (4, 2)):
        red = fn._Reduction(device, rows, groups, gs, m1, n, shared, sms=sms)
        assert red.rs * red.per >= rows > (red.rs - 1) * red.per
        outs = []
        for _ in range(2):
            outs.append(red(partial, torch.empty(1, m1, device=device), torch.empty(groups, n, device=device)))  # only their dtypes matter
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
        per_group = partial.double().sum((0, 2)).cpu()  # (G, NUM_ACC)
        want_num = per_group[:, :m1].sum(0, keepdim=True) if shared else per_group[:, :m1]
        want_den = per_group[:, 6:6 + n]
        gnum, gden = (t.cpu() for t in outs[0])
        assert gnum.shape == want_num.shape and gden.shape == want_den.shape
        scale = partial.abs().double().sum().item() / groups
        assert (gnum.double() - want_num).abs().max() <= 1e-5 * scale
        assert (gden.double() - want_den).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("rows,groups,gs,shared", [
    (352, 8, 24, True),    # 33 row blocks x 8 groups: 264 programs draw tickets
    (37, 96, 2, False),    # the final sum's group loop runs twice
    (5, 3, 7, True),       # one row block
])
def test_one_launch_reduction_equals_two_launches_bitwise(rows, groups, gs, shared, device, monkeypatch):
    """The merged reduction (the first stage's last program writes the gradients) sums the same
    numbers in the same order as the two-launch form: bitwise-equal results. Its counter is back
    at zero after every call, so the next call's tickets start again at 0."""
    torch.manual_seed(rows)
    partial = torch.randn(rows, groups, gs, kernels.NUM_ACC, device=device)
    num, den = torch.empty(1, 6, device=device), torch.empty(groups, 4, device=device)
    red = fn._Reduction(device, rows, groups, gs, 6, 4, shared, sms=132)
    monkeypatch.setattr(reduction, "_MERGED", False)
    two = red(partial, num, den)
    monkeypatch.setattr(reduction, "_MERGED", True)
    counter = reduction._counter(partial.device)
    assert counter is not None and counter.dtype == torch.int32 and counter.data_ptr() % 16 == 0
    for _ in range(3):
        one = red(partial, num, den)
        assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
        assert counter.item() == 0
    assert reduction._counter(partial.device) is counter  # one counter per stream, reused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="concurrent programs, streams and graphs need a GPU")
def test_one_launch_reduction_under_load_on_the_gpu(monkeypatch):
    """On a real GPU the last-program handoff (barrier, acquire-release ticket, L2 reads) must
    see every other program's scratch row: 300 back-to-back calls on two streams at once, and a
    CUDA graph replayed between them, all equal the two-launch result bit for bit; every counter
    ends at zero."""
    torch.manual_seed(0)
    dev = torch.device("cuda", torch.cuda.current_device())
    partials = [torch.randn(352, 8, 24, kernels.NUM_ACC, device=dev) for _ in range(3)]
    num, den = torch.empty(1, 6, device=dev), torch.empty(8, 4, device=dev)
    red = fn._Reduction(dev, 352, 8, 24, 6, 4, True)
    monkeypatch.setattr(reduction, "_MERGED", False)
    want = [red(p, num, den) for p in partials]
    monkeypatch.setattr(reduction, "_MERGED", True)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        red(partials[0], num, den)  # the pool exists before the capture
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        captured = red(partials[0], num, den)
    outs = []
    for i in range(300):
        s = streams[i % 2]
        with torch.cuda.stream(s):
            outs.append((i % 3, red(partials[i % 3], num, den)))
        if i % 50 == 0:
            graph.replay()
    torch.cuda.synchronize()
    for k, (gnum, gden) in outs:
        assert torch.equal(gnum, want[k][0]) and torch.equal(gden, want[k][1])
    assert torch.equal(captured[0], want[0][0]) and torch.equal(captured[1], want[0][1])
    pool, used = reduction._POOLS[dev]
    assert used >= 3 and int(pool.abs().sum()) == 0


def test_reduction_counters_fall_back_to_two_launches(monkeypatch):
    """No counter (and so the two-launch form) where the pool is used up or would have to be
    created inside a CUDA graph capture; a captured call gets a counter of its own."""
    dev = torch.device("cpu")
    monkeypatch.setattr(reduction, "_POOLS", {})
    monkeypatch.setattr(reduction, "_STREAM_COUNTERS", {})
    assert reduction._new_counter(dev, capturing=True) is None  # no pool yet: cannot zero one now
    a = reduction._new_counter(dev, capturing=False)
    b = reduction._new_counter(dev, capturing=True)  # the pool exists: a fresh slot
    assert a is not None and b is not None and b.data_ptr() - a.data_ptr() == 16
    reduction._POOLS[dev][1] = reduction._POOL_SLOTS
    assert reduction._new_counter(dev, capturing=False) is None
    assert reduction._counter(dev) is None  # this stream had none yet, and none is left


def test_rows_collapse_is_exactly_when_view_works():
    """The integer rule the plans (and the compiled path) use says yes exactly where
    x.view(-1, C) succeeds: permuted, sliced, expanded and size-1 dims, 2-D to 4-D."""
    base = torch.zeros(4, 3, 5, 8)
    cases = [base, base[:, :, :, :4], base[:, 1:], base[::2], base[:, :, ::2], base.permute(1, 0, 2, 3),
             base.transpose(1, 2), base[:1], base[:, :1], base[:, :1].expand(4, 3, 5, 8), base[0],
             base[0, :, :1], base[0, 0], base.permute(0, 2, 1, 3)[:, :1], torch.zeros(6, 1, 8)[:, :, :4],
             torch.zeros(8, 6).t()[:, :3], torch.zeros(1, 1, 8).expand(2, 3, 8)]
    for x in cases:
        try:
            x.view(-1, x.shape[-1])
            views = True
        except RuntimeError:
            views = False
        assert planning._rows_collapse(tuple(x.shape), x.stride()) == views, (tuple(x.shape), x.stride())
    assert not planning._plannable(torch.zeros(0, 8)) and planning._plannable(torch.zeros(2, 8))


def test_reduction_counters_are_distinct_across_threads(monkeypatch):
    """Slots handed out while several threads ask at once are all different (two calls sharing a
    counter at the same time would each see the other's tickets)."""
    import threading
    dev = torch.device("cpu")
    monkeypatch.setattr(reduction, "_POOLS", {})
    got, start = [], threading.Barrier(8)

    def take():
        start.wait()
        got.extend(reduction._new_counter(dev, capturing=False).data_ptr() for _ in range(50))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 400 and len(set(got)) == 400


@pytest.mark.parametrize("n_regs,shared,warps,expected", [
    (95, 0, 4, 5),         # 96 x 32 = 3072 registers a warp: 21 warps of 64K -> five 4-warp programs
    (80, 0, 4, 6),         # 2560 a warp: 25 warps -> six
    (32, 0, 4, 16),        # registers allow 64 warps; 2048 threads allow sixteen 128-thread programs
    (255, 0, 4, 2),        # 256 x 32 = 8192 a warp: 8 warps -> two
    (40, 100_000, 4, 2),   # shared memory: 233472 // (100000 + 1024 reserved) = 2
    (16, 0, 1, 32),        # at most 32 programs per SM
])
def test_resident_programs(n_regs, shared, warps, expected):
    """Programs per SM from the compiled kernel's resources (H200: 64K registers allocated per warp
    in 256s, 2048 threads, 228 KiB shared memory with 1 KiB reserved per program, 32 programs)."""
    assert fn._resident_programs(n_regs, shared, warps) == expected


def test_backward_grid_is_one_wave_once_occupancy_is_known(monkeypatch):
    """The split count fills the GPU exactly once (sms x resident programs over the column blocks),
    never more splits than stream tiles; occupancy comes from the first compiled kernel."""
    x = torch.zeros(1)  # on the CPU the SM count stands at 2
    assert fn._num_splits(x, 1000, 4, 3, 4, resident=5) == 3      # (2 x 5) // 3
    assert fn._num_splits(x, 8, 4, 1, 4, resident=5) == 2         # only two tiles
    assert fn._num_splits(x, 1000, 4, 50, 4, resident=5) == 1     # more column blocks than slots
    assert fn._num_splits(x, 1000, 4, 3, 4) == 6                  # unknown: ~32 warps per SM, ceil(16 / 3)

    class Compiled:
        n_regs = 95
        metadata = type("M", (), {"shared": 0})()

    props = type("P", (), {"max_threads_per_multi_processor": 2048, "shared_memory_per_multiprocessor": 233472})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(fn, "_RESIDENT", {})
    fn._learn_resident("k", Compiled(), 4, torch.device("cuda", 0))
    fn._learn_resident("old", object(), 4, torch.device("cuda", 0))  # a compiled kernel that does not say
    assert fn._RESIDENT == {"k": 5, "old": None}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="occupancy is read from kernels compiled for a GPU")
def test_backward_grid_fills_one_wave_on_the_gpu(fresh_plans, monkeypatch):
    monkeypatch.setattr(fn, "_ONE_WAVE", True)  # the default; KAT_ONE_WAVE=0 turns it off
    a, b = _coeffs(device="cuda")
    x = torch.randn(64, 197, 192, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kat.group_rational(x, a, b, impl="triton").sum().backward()
    plan = next(p for p in gr._PLANS.values() if isinstance(p, fn.Plan))
    known = [v for k, v in fn._RESIDENT.items() if k[1] == torch.bfloat16]
    assert known and all(isinstance(v, int) and v >= 1 for v in known)
    splits, blocks = plan.bwd.grid[:2]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert splits * blocks <= sms * max(known)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_first_backward_inside_a_cuda_graph_launches_once(fresh_plans, monkeypatch):
    """A config's first use while a CUDA graph is being captured does not add the occupancy-learning
    launch (the graph would replay it every time): the general path's backward (channels-first, no
    plan) captures exactly one backward kernel, at the guessed grid, and replays correctly."""
    a, b = _coeffs(device="cuda")
    x = torch.randn(4, 192, 50, device="cuda")
    go = torch.randn_like(x)
    monkeypatch.setattr(fn, "_ONE_WAVE", False)
    fn._backward(go, x, a, b, 1)  # compiles and loads the kernels outside the capture, learns nothing
    torch.cuda.synchronize()
    monkeypatch.setattr(fn, "_ONE_WAVE", True)
    monkeypatch.setattr(fn, "_RESIDENT", {})
    launches = []
    real = kernels.group_rational_bwd_kernel.run
    monkeypatch.setattr(kernels.group_rational_bwd_kernel, "run",
                        lambda *args, **kw: launches.append(kw.get("grid")) or real(*args, **kw))
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        gx, ga, gb = fn._backward(go, x, a, b, 1)
    assert len(launches) == 1 and not fn._RESIDENT
    graph.replay()
    torch.cuda.synchronize()
    want = formula64(x, a, b, go, 1)
    assert rel_err(gx, want[1]) <= 1e-5
    assert rel_err(ga, want[2]) <= 1e-4 and rel_err(gb, want[3]) <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the tuner times CUDA graphs on a GPU")
def test_tuner_times_backward_and_reduction_in_graphs_without_counters(fresh_plans):
    """The tuner's timing of a backward config (kernel + two-launch reduction, replayed from a CUDA
    graph) gives a positive time and takes no counter from the pool."""
    from kat.ops.group_rational import tuning
    a, b = _coeffs(device="cuda")
    x2 = torch.randn(2048, 192, device="cuda", dtype=torch.bfloat16)
    go2, gx2 = torch.randn_like(x2), torch.empty_like(x2)
    launch = lambda cfg: fn._launch_bwd(x2, go2, gx2, a, b, 0, 192, 8, cfg)  # noqa: E731
    timed = fn._with_reduction(launch, 192, 192, 8, a, b)
    before = {d: e[1] for d, e in reduction._POOLS.items()}
    ms = [tuning._time_config(timed, cfg) for cfg in fn._bwd_candidates(24)[:3]]
    assert all(0 < t < 10 for t in ms)
    assert {d: e[1] for d, e in reduction._POOLS.items()} == before


def _plan_grads(plan, x, a, b, go, merged=True):
    gx, ga, gb = plan.backward(go, x, a, b, merged=merged)
    return gx.clone(), ga.clone(), gb.clone()


def test_backward_workspace_is_kept_per_stream_and_exact(device, fresh_plans, monkeypatch):
    """Eager backward calls of one plan reuse one set of partial-sum buffers, and every call's
    gradients equal those of a call with fresh buffers (bitwise: same kernels, same order), also
    when calls with other inputs came in between; the returned tensors never alias the buffers."""
    a, b = _coeffs(groups=8, shared=True, device=device)
    xs = [torch.randn(3, 40, 64, device=device) for _ in range(3)]
    gos = [torch.randn_like(x) for x in xs]
    plan = gr.plan_for(xs[0], a, b, "triton")
    assert plan is not None
    kept = [_plan_grads(plan, x, a, b, go) for x, go in zip(xs, gos)]
    bufs = plan.workspace.get()
    assert len(plan.workspace.kept) == 1 and bufs is plan.workspace.get()
    assert bufs[0].shape == plan.partial_shape and bufs[1].shape == plan.red.scratch_shape
    monkeypatch.setattr(reduction, "_REUSE", False)
    unkept = plan.workspace.get()  # fresh buffers, not the kept ones
    assert not {t.data_ptr() for t in unkept} & {t.data_ptr() for t in bufs}
    assert not {t.data_ptr() for t in plan.workspace.get(keep=False)} & {t.data_ptr() for t in bufs}
    assert len(plan.workspace.kept) == 1
    fresh = [_plan_grads(plan, x, a, b, go) for x, go in zip(xs, gos)]
    for k, f, x, go in zip(kept, fresh, xs, gos):
        assert all(torch.equal(u, v) for u, v in zip(k, f))
        want = formula64(x, a, b, go, -1)
        assert rel_err(k[0], want[1]) <= 1e-5 and rel_err(k[1], want[2]) <= 1e-4 and rel_err(k[2], want[3]) <= 1e-4
    monkeypatch.setattr(reduction, "_REUSE", True)
    gx, ga, gb = plan.backward(gos[0], xs[0], a, b)
    ptrs = {t.data_ptr() for t in bufs}
    assert not ptrs & {gx.data_ptr(), ga.data_ptr(), gb.data_ptr()}
    # the tuner's and traced graphs' calls (merged=False) never touch the kept buffers
    before = [t.clone() for t in bufs]
    _plan_grads(plan, xs[1], a, b, gos[1], merged=False)
    assert all(torch.equal(u, v) for u, v in zip(before, bufs))


def test_backward_workspace_is_distinct_per_thread(device, fresh_plans):
    """Another host thread gets buffers of its own (two threads launching on one stream must not
    share them) and the same gradients."""
    import threading
    a, b = _coeffs(device=device)
    x = torch.randn(2, 30, 32, device=device)
    go = torch.randn_like(x)
    plan = gr.plan_for(x, a, b, "triton")
    here = _plan_grads(plan, x, a, b, go)
    box = []
    t = threading.Thread(target=lambda: box.append((_plan_grads(plan, x, a, b, go), plan.workspace.get())))
    t.start()
    t.join()
    there, their_bufs = box[0]
    assert all(torch.equal(u, v) for u, v in zip(here, there))
    assert len(plan.workspace.kept) == 2
    assert {u.data_ptr() for u in plan.workspace.get()}.isdisjoint(u.data_ptr() for u in their_bufs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams and graphs need a GPU")
def test_backward_workspace_per_stream_and_not_in_graph_captures(fresh_plans):
    """Another stream gets its own buffers; a backward captured into a CUDA graph allocates its own
    (the graph owns them) and replays correctly while eager calls keep using the kept ones."""
    a, b = _coeffs(device="cuda")
    x = torch.randn(4, 50, 64, device="cuda")
    go = torch.randn_like(x)
    plan = gr.plan_for(x, a, b, "triton")
    eager = _plan_grads(plan, x, a, b, go)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        other = _plan_grads(plan, x, a, b, go)
    torch.cuda.current_stream().wait_stream(stream)
    assert len(plan.workspace.kept) == 2
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        gx, ga, gb = plan.backward(go, x, a, b)
    assert len(plan.workspace.kept) == 2
    graph.replay()
    torch.cuda.synchronize()
    for t in (other, (gx, ga, gb)):
        assert all(torch.equal(u, v) for u, v in zip(eager, t))
