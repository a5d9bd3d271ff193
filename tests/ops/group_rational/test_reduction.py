"""The coefficient reduction (partial sums -> gradients, in one launch or two, bitwise the same),
its counters, and the buffers a backward keeps per stream and thread."""
import threading

import pytest
import torch

from kat.ops.group_rational import kernels, reduction
from kat.ops.group_rational.reduction import Reduction


@pytest.mark.parametrize("rows,groups,gs,shared,sms", [
    (37, 96, 2, True, 2),      # more groups than one final-program block: the group loop runs twice
    (37, 96, 2, False, 2),
    (50, 1, 200, True, 2),     # 200 channels in one group: four channel blocks per row block
    (352, 8, 24, True, 132),   # H200-sized: 33 row blocks, final block of 64 rows, 2 group blocks
    (352, 8, 24, False, 132),
    (22, 8, 384, False, 132),  # KAT-B's fc1 output width (3072 = 8 x 384)
    (5, 3, 7, True, 2),        # fewer rows than a row block
])
def test_reduction_matches_a_float64_sum(rows, groups, gs, shared, sms, device):
    """The reduction sums the partials as a float64 sum does (up to fp32 rounding), per group or
    over all groups for a shared numerator, for orders <= (5, 4), bitwise the same on every call
    and in one launch or two."""
    torch.manual_seed(rows + groups)
    partial = torch.randn(rows, groups, gs, kernels.NUM_ACC, device=device)
    for m1, n in ((6, 4), (4, 2)):
        red = Reduction(device, rows, groups, gs, m1, n, shared, sms=sms)
        assert red.rs * red.per >= rows > (red.rs - 1) * red.per
        num, den = torch.empty(1, m1, device=device), torch.empty(groups, n, device=device)  # dtypes only
        outs = [red(partial, num, den), red(partial, num, den), red(partial, num, den, merged=False)]
        for o in outs[1:]:
            assert torch.equal(outs[0][0], o[0]) and torch.equal(outs[0][1], o[1])
        per_group = partial.double().sum((0, 2)).cpu()  # (G, NUM_ACC)
        want_num = per_group[:, :m1].sum(0, keepdim=True) if shared else per_group[:, :m1]
        want_den = per_group[:, 6:6 + n]
        gnum, gden = (t.cpu() for t in outs[0])
        assert gnum.shape == want_num.shape and gden.shape == want_den.shape
        scale = partial.abs().double().sum().item() / groups
        assert (gnum.double() - want_num).abs().max() <= 1e-5 * scale
        assert (gden.double() - want_den).abs().max() <= 1e-5 * scale


def test_one_launch_leaves_its_counter_at_zero(device):
    """The merged reduction's counter is back at zero after every call (the next call's tickets
    start at 0 again) and a stream keeps its counter."""
    partial = torch.randn(352, 8, 24, kernels.NUM_ACC, device=device)
    red = Reduction(device, 352, 8, 24, 6, 4, True, sms=132)
    num, den = torch.empty(1, 6, device=device), torch.empty(8, 4, device=device)
    counter = reduction._counter(partial.device)
    assert counter is not None and counter.dtype == torch.int32 and counter.data_ptr() % 16 == 0
    for _ in range(3):
        red(partial, num, den)
        assert counter.item() == 0
    assert reduction._counter(partial.device) is counter


@pytest.mark.skipif(not torch.cuda.is_available(), reason="concurrent programs, streams and graphs need a GPU")
def test_one_launch_reduction_under_load_on_the_gpu():
    """On a real GPU the last-program handoff (barrier, acquire-release ticket, L2 reads) must see
    every other program's scratch row: 300 back-to-back calls on two streams at once, and a CUDA
    graph replayed between them, all equal the two-launch result bit for bit; counters end at zero."""
    torch.manual_seed(0)
    dev = torch.device("cuda", torch.cuda.current_device())
    partials = [torch.randn(352, 8, 24, kernels.NUM_ACC, device=dev) for _ in range(3)]
    num, den = torch.empty(1, 6, device=dev), torch.empty(8, 4, device=dev)
    red = Reduction(dev, 352, 8, 24, 6, 4, True)
    want = [red(p, num, den, merged=False) for p in partials]
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
        with torch.cuda.stream(streams[i % 2]):
            outs.append((i % 3, red(partials[i % 3], num, den)))
        if i % 50 == 0:
            graph.replay()
    torch.cuda.synchronize()
    for k, (gnum, gden) in outs:
        assert torch.equal(gnum, want[k][0]) and torch.equal(gden, want[k][1])
    assert torch.equal(captured[0], want[0][0]) and torch.equal(captured[1], want[0][1])
    pool, used = reduction._POOLS[dev]
    assert used >= 3 and int(pool.abs().sum()) == 0


def test_counters_fall_back_to_two_launches(monkeypatch):
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


def test_counters_are_distinct_across_threads(monkeypatch):
    """Slots handed out while several threads ask at once are all different."""
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


def test_workspace_is_kept_per_thread(device):
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # as a tensor's device names it
    ws = reduction.Workspace(device, ((3, 4, 10), (2, 8, 16)))
    bufs = ws.get()
    assert bufs is ws.get() and [tuple(t.shape) for t in bufs] == [(3, 4, 10), (2, 8, 16)]
    assert all(t.dtype == torch.float32 for t in bufs)
    box = []
    t = threading.Thread(target=lambda: box.append(ws.get()))
    t.start()
    t.join()
    assert len(ws.kept) == 2 and {u.data_ptr() for u in bufs}.isdisjoint(u.data_ptr() for u in box[0])
    assert {u.data_ptr() for u in ws.fresh()}.isdisjoint(u.data_ptr() for u in bufs)
