"""Launching a Triton kernel at a fixed config and grid with little host time, and the helpers that
size grids. No kernel is imported here: ``import kat`` never imports Triton."""
from __future__ import annotations

import contextlib
import functools
import threading

import torch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``'s GPU; 2 off the GPU (the interpreter), where grids
    only need to be small."""
    if device.type != "cuda":
        return 2
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def device_of(x: torch.Tensor):
    """A context that makes x's GPU current where it is not (Triton launches on the current device)."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def num_splits(device: torch.device, rows: int, block_s: int, blocks: int, warps: int,
               resident: int | None = None) -> int:
    """Programs along the stream axis of a persistent kernel, never more than there are tiles. With
    ``resident`` (programs of the compiled kernel one SM holds at once): one full wave, every
    program running from the start. Without (not known yet, the interpreter): ~32 warps per SM."""
    sms = device_sms(device)
    if resident:
        return max(1, min(cdiv(rows, block_s), (sms * resident) // blocks))
    return max(1, min(cdiv(rows, block_s), cdiv(sms * max(1, 32 // warps), blocks)))


def resident_programs(n_regs: int, shared: int, warps: int, max_threads: int = 2048,
                      smem_per_sm: int = 233472, regs_per_sm: int = 65536) -> int:
    """Programs of a kernel (``n_regs`` registers per thread, ``shared`` bytes of shared memory) that
    one SM holds at once: registers go to warps in blocks of 256, every program takes 1 KiB of
    shared memory more than it asks for (sm_80/sm_90), at most 32 programs. H200 defaults."""
    regs_per_warp = cdiv(max(n_regs, 1) * 32, 256) * 256
    by_regs = (regs_per_sm // regs_per_warp) // warps
    by_threads = max_threads // (32 * warps)
    by_smem = smem_per_sm // (shared + 1024) if shared else 32
    return max(1, min(by_regs, by_threads, by_smem, 32))


def resident_of(compiled, warps: int, device: torch.device) -> int | None:
    """``resident_programs`` of a compiled kernel that has run (its ``n_regs`` and
    ``metadata.shared``, as Triton's own tutorials read them), or None where it does not say."""
    n_regs = getattr(compiled, "n_regs", None)
    shared = getattr(getattr(compiled, "metadata", None), "shared", None)
    if not isinstance(n_regs, int) or n_regs <= 0 or not isinstance(shared, int):
        return None
    props = torch.cuda.get_device_properties(device)
    return resident_programs(n_regs, shared, warps, getattr(props, "max_threads_per_multi_processor", 2048),
                             getattr(props, "shared_memory_per_multiprocessor", 233472),
                             getattr(props, "regs_per_multiprocessor", 65536))


def _triton_version() -> tuple[int, int]:
    import triton
    try:
        return tuple(int(p) for p in triton.__version__.split(".")[:2])
    except ValueError:
        return (0, 0)


# Triton releases whose CompiledKernel.run takes (gx, gy, gz, stream, function, packed_metadata,
# launch_metadata, enter_hook, exit_hook, *args); seen working with 3.6 (H200) and 3.8.
_BINARY_LAUNCH_VERSIONS = ((3, 5), (3, 8))
_binary_launch = None  # triton.knobs.runtime where binary launches are on, False where off; None: not decided


def launch_binary(compiled, grid, device_index: int, args) -> bool:
    """Launch a compiled kernel through its binary launcher, skipping ``JITFunction.run``'s per-call
    argument binding and cache lookup (H200: 7-8 us instead of 16-20 us a launch). The one place
    that uses Triton internals: only for the versions above, never while a launch hook (a
    profiler) is installed, and off for the process once a launcher rejects the call. Returns False
    where nothing was launched, and the caller then launches through Triton's public path."""
    global _binary_launch
    runtime = _binary_launch
    if runtime is None:
        lo, hi = _BINARY_LAUNCH_VERSIONS
        if lo <= _triton_version() <= hi:
            from triton import knobs
            runtime = knobs.runtime
        else:
            runtime = False
        _binary_launch = runtime
    if runtime is False:
        return False
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and (not hasattr(hook, "calls") or hook.calls):
            return False
    try:
        compiled.run(grid[0], grid[1], grid[2], torch._C._cuda_getCurrentRawStream(device_index),
                     compiled.function, compiled.packed_metadata, None, None, None, *args)
    except TypeError:  # a launcher with another signature (raised before anything is launched)
        _binary_launch = False
        return False
    return True


class Launcher:
    """One kernel at a fixed config and grid; pointer arguments first (``n_ptr`` of them), then
    integers fixed by the caller's plan, then the constexprs. The first call goes through Triton
    (compiling if needed) and keeps the compiled kernel; later calls on CUDA whose pointers are
    16-byte aligned, as they were for that compile, go through ``launch_binary``."""

    __slots__ = ("kernel", "grid", "consts", "const_values", "num_warps", "n_ptr", "compiled")

    def __init__(self, kernel, grid, consts: dict, num_warps: int, n_ptr: int, compiled=None):
        if not 1 <= len(grid) <= 3:
            raise ValueError(f"a launch grid has 1 to 3 dimensions, got {grid!r}")
        self.kernel, self.consts, self.num_warps, self.n_ptr = kernel, consts, num_warps, n_ptr
        self.grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))  # the launcher takes all three
        self.const_values = tuple(consts.values())
        self.compiled = compiled

    def __call__(self, *args):
        """Launches; returns the compiled kernel on a launch through Triton, else None."""
        compiled = self.compiled
        if compiled is not None:
            n = self.n_ptr
            # pointers as integers: the launcher then asks the driver nothing about them
            ptrs = [t.data_ptr() for t in args[:n]]
            if not any(p & 15 for p in ptrs) and launch_binary(
                    compiled, self.grid, args[0].get_device(), (*ptrs, *args[n:], *self.const_values)):
                return None
        ret = self.kernel[self.grid](*args, **self.consts, num_warps=self.num_warps)
        if compiled is None and args[0].is_cuda and hasattr(ret, "packed_metadata") \
                and all(t.data_ptr() % 16 == 0 for t in args[:self.n_ptr]):
            self.compiled = ret
        return ret


def outside_graph_pools(fn, device: torch.device):
    """``fn()`` run where no CUDA graph memory pool takes its allocations: on a helper thread,
    synchronised before and after. torch.compile's CUDA graph trees send every allocation of the
    calling thread to a private pool during a graph's warm-up; a tensor that outlives the call
    there (the reduction's counters, kept buffers) is reported as untracked and may be overwritten
    by a later graph. Off CUDA, ``fn()`` is simply called."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return fn()
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.synchronize(index)
    box: list = []

    def work():
        try:
            with torch.cuda.device(index):
                result = fn()
                torch.cuda.synchronize(index)
            box.append((True, result))
        except BaseException as exc:  # re-raised on the caller's thread
            box.append((False, exc))

    thread = threading.Thread(target=work, name="kat-outside-graph-pools")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value
