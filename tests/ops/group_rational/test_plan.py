"""Plans: one per call signature in one cache; layouts (rows, channels-first, copies); the backward's
kept buffers; validation never skipped by the cache; autocast; CUDA graph captures."""
import threading

import pytest
import torch

import kat
from kat.ops.group_rational import plan as planning
from tests.helpers import formula64, rel_err
from tests.ops.group_rational.conftest import only_plan
from tests.ops.group_rational.test_op import _check, _coeffs


def _grads(x, a, b, go, **kw):
    x, a, b = (t.detach().requires_grad_() for t in (x, a, b))
    y = kat.group_rational(x, a, b, impl="triton", **kw)
    return (y, *torch.autograd.grad(y, (x, a, b), go))


def test_row_view_is_exactly_when_view_works():
    """The integer rule of the rows layout says yes exactly where x.view(-1, C) succeeds: permuted,
    sliced, expanded and size-1 dims, 2-D to 4-D."""
    base = torch.zeros(4, 3, 5, 8)
    cases = [base, base[:, :, :, :4], base[:, 1:], base[::2], base[:, :, ::2], base.permute(1, 0, 2, 3),
             base.transpose(1, 2), base[:1], base[:, :1], base[:, :1].expand(4, 3, 5, 8), base[0],
             base[0, :, :1], base[0, 0], base.permute(0, 2, 1, 3)[:, :1], torch.zeros(6, 1, 8)[:, :, :4],
             torch.zeros(8, 6).t()[:, :3], torch.zeros(1, 1, 8).expand(2, 3, 8)]
    for x in cases:
        try:
            v = x.view(-1, x.shape[-1])
        except RuntimeError:
            v = None
        got = planning.row_view(x, x.dim() - 1)
        assert (got is not None) == (v is not None), (tuple(x.shape), x.stride())
        if v is not None and v.shape[0] > 1:
            assert got == (v.shape[0], v.stride(0))


@pytest.mark.parametrize("make,layout,copy", [
    (lambda: torch.randn(2, 50, 64), True, False),
    (lambda: torch.randn(6, 40, 96)[:, ::2, :64], True, False),               # rows of one stride
    (lambda: torch.randn(2, 64, 5, 3).contiguous(memory_format=torch.channels_last), True, False),
    (lambda: torch.randn(2, 64, 5, 3), False, False),                          # (B, C, L)
    (lambda: torch.randn(50, 2, 64).transpose(0, 1), True, True),             # rows that do not collapse
    (lambda: torch.randn(2, 3, 64, 5).transpose(2, 3), True, True),           # channel stride 5
    (lambda: torch.randn(2, 5, 64, 3).transpose(1, 2), False, True),          # (B, C, L), not contiguous
])
def test_layouts(make, layout, copy, device):
    """Each layout the kernels read directly, or after a copy; the output strides are the fake
    implementation's (what torch.compile was promised); float64 agreement."""
    x = make().to(device)
    dim = -1 if x.shape[-1] == 64 else (1 if x.shape[1] == 64 else 2)
    a, b = _coeffs(device=device)
    y = _check("triton", x, a, b, channel_dim=dim)[0]
    plan = only_plan(x, a, b, dim)
    assert (plan.rows_layout, plan.copy) == (layout, copy)
    cd = dim % x.dim()
    assert y.stride() == planning.empty_output(x, cd, planning.rows_layout(x, cd)).stride()


def test_one_plan_per_call_signature(device):
    """Calls of one signature share a plan; without grad no autograd node; bitwise-equal results."""
    a, b = _coeffs(device=device)
    x = torch.randn(2, 9, 64, device=device)
    go = torch.randn_like(x)
    first = _grads(x, a, b, go)
    plan = only_plan(x, a, b)
    second = _grads(x, a, b, go)
    assert only_plan(x, a, b) is plan
    assert all(torch.equal(u, v) for u, v in zip(first, second))
    with torch.no_grad():
        y = kat.group_rational(x, a, b, impl="triton")
    assert y.grad_fn is None and torch.equal(y, first[0])


def test_expanded_grad_out(device):
    """y.sum().backward() hands backward an expanded (stride-0) gradient."""
    a, b = _coeffs(device=device)
    x = torch.randn(4, 10, 32, device=device, requires_grad=True)
    kat.group_rational(x, a, b, impl="triton").sum().backward()
    rgx = formula64(x.detach(), a, b, torch.ones_like(x), -1)[1]
    assert rel_err(x.grad, rgx) <= 1e-5


def test_cached_calls_still_validate(device):
    """A cached plan never skips a check: anything the checks look at is part of the key."""
    a, b = _coeffs(device=device)
    x = torch.randn(2, 5, 16, device=device)
    kat.group_rational(x, a, b, impl="triton")
    with pytest.raises(ValueError, match="device"):
        kat.group_rational(x, a.to("meta"), b, impl="triton")
    with pytest.raises(TypeError, match="floating"):
        kat.group_rational(x, a, b.to(torch.int32), impl="triton")
    for _ in range(2):  # twice: errors are not cached away
        with pytest.raises(ValueError, match="divisible"):
            kat.group_rational(torch.randn(2, 5, 12, device=device), a, b, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        kat.group_rational(x, a, b, impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        kat.group_rational(x, a, b, impl=["triton"])  # unhashable: still the impl message
    with pytest.raises(TypeError, match="numerator"):
        kat.group_rational(x, a.cpu().numpy(), b, impl="triton")


def test_autocast_keeps_input_dtype(device):
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


def test_backward_buffers_are_kept_and_never_returned(device):
    """Backward calls of one plan reuse one set of partial-sum buffers; every call's gradients
    equal those of the float64 formula and of the first call, also with other inputs in between;
    returned tensors never alias the kept buffers."""
    a, b = _coeffs(groups=8, shared=True, device=device)
    xs = [torch.randn(3, 40, 64, device=device) for _ in range(3)]
    gos = [torch.randn_like(x) for x in xs]
    plan = only_plan(xs[0], a, b)
    first = [tuple(t.clone() for t in plan.backward(go, x, a, b)) for x, go in zip(xs, gos)]
    bufs = plan.workspace.get()
    assert len(plan.workspace.kept) == 1 and bufs is plan.workspace.get()
    assert bufs[1].shape == plan.red.scratch_shape
    for k, x, go in zip(first, xs, gos):
        want = formula64(x, a, b, go, -1)
        assert rel_err(k[0], want[1]) <= 1e-5 and rel_err(k[1], want[2]) <= 1e-4 and rel_err(k[2], want[3]) <= 1e-4
    again = plan.backward(gos[0], xs[0], a, b)
    assert all(torch.equal(u, v) for u, v in zip(again, first[0]))
    assert not {t.data_ptr() for t in bufs} & {t.data_ptr() for t in again}


def test_backward_buffers_are_distinct_per_thread(device):
    a, b = _coeffs(device=device)
    x = torch.randn(2, 30, 32, device=device)
    go = torch.randn_like(x)
    plan = only_plan(x, a, b)
    here = [t.clone() for t in plan.backward(go, x, a, b)]
    box = []
    t = threading.Thread(target=lambda: box.append(([u.clone() for u in plan.backward(go, x, a, b)],
                                                    plan.workspace.get())))
    t.start()
    t.join()
    there, their_bufs = box[0]
    assert all(torch.equal(u, v) for u, v in zip(here, there))
    assert len(plan.workspace.kept) == 2
    assert {u.data_ptr() for u in plan.workspace.get()}.isdisjoint(u.data_ptr() for u in their_bufs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams and graphs need a GPU")
def test_backward_buffers_per_stream_and_not_in_graph_captures():
    """Another stream gets its own buffers; a backward captured into a CUDA graph allocates its own
    (the graph owns them) and replays correctly while eager calls keep using the kept ones."""
    a, b = _coeffs(device="cuda")
    x = torch.randn(4, 50, 64, device="cuda")
    go = torch.randn_like(x)
    plan = only_plan(x, a, b)
    eager = [t.clone() for t in plan.backward(go, x, a, b)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        other = [t.clone() for t in plan.backward(go, x, a, b)]
    torch.cuda.current_stream().wait_stream(stream)
    assert len(plan.workspace.kept) == 2
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        captured = plan.backward(go, x, a, b)
    assert len(plan.workspace.kept) == 2
    graph.replay()
    torch.cuda.synchronize()
    for t in (other, captured):
        assert all(torch.equal(u, v) for u, v in zip(eager, t))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_first_plan_inside_a_cuda_graph_capture(configs):
    """A plan first built while a CUDA graph is being captured adds no occupancy-learning launch
    (the graph would replay it every time): one backward kernel at the guessed grid, replayed right."""
    from kat.ops.group_rational import kernels
    a, b = _coeffs(device="cuda")
    x = torch.randn(4, 192, 50, device="cuda")
    go = torch.randn_like(x)
    _grads(x[:2], a, b, go[:2], channel_dim=1)  # compiles and loads the kernels outside the capture
    torch.cuda.synchronize()
    configs()  # forget the plans
    launches = []
    real = kernels.group_rational_bwd_kernel.run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels.group_rational_bwd_kernel, "run",
                   lambda *args, **kw: launches.append(kw.get("grid")) or real(*args, **kw))
        stream = torch.cuda.Stream()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            plan = planning.plan_for(x, a, b, 1)
            gx, ga, gb = plan.backward(go, x, a, b)
    assert len(launches) == 1
    graph.replay()
    torch.cuda.synchronize()
    want = formula64(x, a, b, go, 1)
    assert rel_err(gx, want[1]) <= 1e-5
    assert rel_err(ga, want[2]) <= 1e-4 and rel_err(gb, want[3]) <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the tuner times CUDA graphs on a GPU")
def test_tuning_times_backward_and_reduction_without_taking_counters(monkeypatch, configs):
    """A plan built with tuning on times every candidate (kernel + two-launch reduction, replayed
    from CUDA graphs) and takes no counter from the pool for it."""
    from kat.ops.group_rational import reduction, tuning
    monkeypatch.setenv("KAT_AUTOTUNE", "1")
    monkeypatch.setenv("KAT_TUNE_CACHE", "0")
    configs(bwd=tuning.bwd_candidates(torch.device("cuda"), 24)[:3])
    a, b = _coeffs(device="cuda")
    x = torch.randn(2048, 192, device="cuda", dtype=torch.bfloat16)
    before = {d: e[1] for d, e in reduction._POOLS.items()}
    plan = planning.plan_for(x, a, b, 1)
    assert plan.bwd_cfg in tuning.GPU_BWD_CONFIGS[:] and {d: e[1] for d, e in reduction._POOLS.items()} == before
