"""Launching: the binary launch path (the one use of Triton internals) and its public fallback, grid
dimensions, pointer alignment, launch hooks; grid sizing from occupancy."""
from types import SimpleNamespace

import pytest
import torch

import kat
from kat.ops.group_rational import launch as launching
from tests.helpers import formula64, rel_err
from tests.ops.group_rational.conftest import only_plan
from tests.ops.group_rational.test_op import _coeffs


class _Kernel:
    """Stands in for a JITFunction: ``kernel[grid](*args, **consts, num_warps=...)`` is recorded."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((grid, args, kw))


@pytest.fixture
def binary(monkeypatch):
    """Binary launches on (whatever Triton this is), no launch hooks, a stand-in stream: as on a GPU."""
    monkeypatch.setattr(launching, "_binary_launch", SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None))
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 0, raising=False)


def test_launch_through_the_binary_passes_all_three_grid_dimensions(binary):
    """The launcher takes (gx, gy, gz): a 1-D grid (the reduction's final program, the LayerNorm
    kernels) launches as (n, 1, 1); pointers go as integer addresses, then the other arguments and
    the constants."""
    for grid, expected in (((7,), (7, 1, 1)), ((3, 2), (3, 2, 1)), ((2, 3, 4), (2, 3, 4))):
        launched = []

        class Compiled:
            function = packed_metadata = None

            def run(self, gx, gy, gz, stream, *rest):
                launched.append(((gx, gy, gz), rest[5:]))

        launch = launching.Launcher(None, grid, {"BLOCK": 16}, 4, n_ptr=1, compiled=Compiled())
        x = torch.zeros(16)
        assert launch(x, 5) is None
        assert launched == [(expected, (x.data_ptr(), 5, 16))]


def test_rejected_binary_launch_falls_back_to_triton_for_the_process(binary):
    """A Triton whose launcher takes other arguments raises TypeError before launching: that launch
    and every later one go through Triton's public path."""
    kernel = _Kernel()

    class Rejecting:
        function = packed_metadata = None

        def run(self, *args):
            raise TypeError("launcher() takes 12 positional arguments")

    launch = launching.Launcher(kernel, (3, 2), {"BLOCK_S": 8}, 4, n_ptr=1, compiled=Rejecting())
    x = torch.zeros(16)
    launch(x, 5)
    assert launching._binary_launch is False
    assert kernel.calls == [((3, 2, 1), (x, 5), {"BLOCK_S": 8, "num_warps": 4})]
    launch(x, 5)
    assert len(kernel.calls) == 2


def test_unaligned_pointers_take_triton_path(binary):
    """The compiled binary assumed 16-byte aligned pointers; a pointer off that alignment goes
    through Triton's own launch, which specialises for it."""
    direct, kernel = [], _Kernel()

    class Compiled:
        function = packed_metadata = None

        def run(self, *a):
            direct.append(a)

    launch = launching.Launcher(kernel, (2,), {"BLOCK": 16}, 4, n_ptr=2, compiled=Compiled())
    base = torch.zeros(64)
    aligned, odd = base[:16], base[1:17]
    assert aligned.data_ptr() % 16 == 0 and odd.data_ptr() % 16 != 0
    launch(aligned, aligned, 3)
    launch(aligned, odd, 3)
    assert len(direct) == 1 and [c[1] for c in kernel.calls] == [(aligned, odd, 3)]


def test_binary_launch_only_for_known_triton_versions(monkeypatch):
    """Outside the versions whose launcher signature is known, nothing is launched through it."""
    class Compiled:
        def run(self, *a):
            raise AssertionError("must not be called")

    monkeypatch.setattr(launching, "_binary_launch", None)
    monkeypatch.setattr(launching, "_triton_version", lambda: (9, 0))
    assert launching.launch_binary(Compiled(), (1, 1, 1), 0, ()) is False
    assert launching._binary_launch is False
    monkeypatch.setattr(launching, "_binary_launch", None)
    monkeypatch.setattr(launching, "_triton_version", lambda: launching._BINARY_LAUNCH_VERSIONS[1])
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 0, raising=False)
    ran = []

    class Ok:
        function = packed_metadata = None

        def run(self, *a):
            ran.append(a)

    assert launching.launch_binary(Ok(), (1, 1, 1), 0, (7,)) is True and ran


def test_launch_hooks_take_the_public_path(binary, monkeypatch):
    """A profiler's launch hook must see every launch: with one installed, launch_binary declines;
    an empty hook chain (Triton >= 3.5's default) counts as none."""
    knobs = pytest.importorskip("triton.knobs")
    chain = knobs.runtime.launch_enter_hook
    if not hasattr(chain, "add"):
        pytest.skip("this Triton keeps launch hooks as plain attributes")
    monkeypatch.setattr(launching, "_binary_launch", knobs.runtime)
    ran = []

    class Ok:
        function = packed_metadata = None

        def run(self, *a):
            ran.append(a)

    assert launching.launch_binary(Ok(), (1, 1, 1), 0, ())

    def hook(metadata):
        pass

    chain.add(hook)
    try:
        assert not launching.launch_binary(Ok(), (1, 1, 1), 0, ())
    finally:
        chain.remove(hook)
    assert len(ran) == 1


def test_launch_grid_of_no_or_four_dimensions_is_refused():
    for grid in ((), (1, 2, 3, 4)):
        with pytest.raises(ValueError, match="1 to 3 dimensions"):
            launching.Launcher(None, grid, {}, 4, n_ptr=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="binary launches exist on CUDA only")
def test_binary_launch_is_used_and_exact():
    a, b = _coeffs(device="cuda")
    x = torch.randn(8, 197, 192, device="cuda", dtype=torch.bfloat16)
    go = torch.randn_like(x)

    def grads():
        xg, ag, bg = (t.detach().requires_grad_() for t in (x, a, b))
        y = kat.group_rational(xg, ag, bg, impl="triton")
        return (y, *torch.autograd.grad(y, (xg, ag, bg), go))

    first = grads()
    plan = only_plan(x, a, b)
    assert plan.fwd.compiled is not None and plan.bwd.compiled is not None
    for f, s in zip(first, grads()):  # binary launches
        assert torch.equal(f, s)
    # an unaligned view (offset by one element) takes Triton's own launch path and is still right
    xo = torch.randn(8 * 197 * 192 + 1, device="cuda", dtype=torch.bfloat16)[1:].view_as(x)
    y = kat.group_rational(xo, a, b, impl="triton")
    assert rel_err(y, formula64(xo, a, b, torch.ones_like(xo), -1)[0]) <= 1e-2


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
    assert launching.resident_programs(n_regs, shared, warps) == expected


def test_backward_grid_is_one_wave_once_occupancy_is_known(monkeypatch):
    """The split count fills the GPU exactly once (sms x resident programs over the column blocks),
    never more splits than stream tiles; occupancy comes from the compiled kernel."""
    cpu = torch.device("cpu")  # on the CPU the SM count stands at 2
    assert launching.num_splits(cpu, 1000, 4, 3, 4, resident=5) == 3      # (2 x 5) // 3
    assert launching.num_splits(cpu, 8, 4, 1, 4, resident=5) == 2         # only two tiles
    assert launching.num_splits(cpu, 1000, 4, 50, 4, resident=5) == 1     # more column blocks than slots
    assert launching.num_splits(cpu, 1000, 4, 3, 4) == 6                  # unknown: ~32 warps per SM

    class Compiled:
        n_regs = 95
        metadata = type("M", (), {"shared": 0})()

    props = type("P", (), {"max_threads_per_multi_processor": 2048, "shared_memory_per_multiprocessor": 233472})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert launching.resident_of(Compiled(), 4, torch.device("cuda", 0)) == 5
    assert launching.resident_of(object(), 4, torch.device("cuda", 0)) is None  # a kernel that does not say


@pytest.mark.skipif(not torch.cuda.is_available(), reason="occupancy is read from kernels compiled for a GPU")
def test_backward_grid_fills_one_wave_on_the_gpu():
    a, b = _coeffs(device="cuda")
    x = torch.randn(64, 197, 192, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kat.group_rational(x, a, b, impl="triton").sum().backward()
    plan = only_plan(x.detach(), a, b)
    resident = launching.resident_of(plan.bwd.compiled, plan.bwd.num_warps, x.device)
    assert isinstance(resident, int) and resident >= 1
    splits, blocks = plan.bwd.grid[:2]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert splits * blocks <= sms * resident
