"""Launching the kernels with little host time: a kernel at a fixed config and grid (``_Launch``)
goes through Triton's JIT on its first call and then, on CUDA, straight through the compiled
binary's launcher; plus the small helpers every launcher sizes its grid with (the backward's splits for one wave of
resident programs among them). ``TRITON_INTERPRET``
and ``KAT_DIRECT_LAUNCH`` are read at import."""
from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``'s GPU, for sizing grids; 2 off the GPU (the
    interpreter), where grids only need to be small."""
    if device.type != "cuda":
        return 2
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _launch_guard(x: torch.Tensor):
    """Launch on x's GPU (Triton launches on the current device)."""
    if x.device.type == "cuda" and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


# Launching through the compiled binary skips JITFunction.run's per-call argument binding,
# specialisation and cache-key work (measured on the H200 VM for a trivial kernel: 16-20 us a
# launch through Triton, 7-8 us through CompiledKernel.run). On by default since
# tests/ops/test_fast_path.py::test_direct_launch_is_used_and_exact passed on an H200 (Triton 3.6;
# the launcher's call signature is the same in Triton 3.8); KAT_DIRECT_LAUNCH=0 turns it off. A
# Triton whose launcher rejects the call (TypeError before anything is launched) turns it off for
# the process and the launch goes through Triton instead.
_DIRECT = not _INTERPRET and os.environ.get("KAT_DIRECT_LAUNCH", "1") != "0"


_RUNTIME_KNOBS = None  # triton.knobs.runtime, looked up on the first launch (Triton >= 3.5)


def _launch_hooks_set() -> bool:
    """True when Triton launch hooks (profilers) are installed: launch through Triton then, so the
    hooks see every launch with its metadata. Triton >= 3.5 keeps the hooks in (possibly empty)
    HookChain objects, older versions in plain attributes that are None when unset."""
    global _RUNTIME_KNOBS
    rt = _RUNTIME_KNOBS
    if rt is None:
        try:
            from triton import knobs
        except ImportError:  # no knobs module: an older Triton; never launch directly
            return True
        rt = _RUNTIME_KNOBS = knobs.runtime
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and (not hasattr(hook, "calls") or hook.calls):
            return True
    return False


def _disable_direct() -> None:
    global _DIRECT
    _DIRECT = False


class _Launch:
    """One kernel at a fixed config and grid, for one plan (fixed shapes, strides and dtypes; the
    pointer arguments come first, ``n_ptr`` of them). The first call goes through Triton's JIT
    (compiling if needed) and keeps the CompiledKernel it returns; later calls whose pointers are
    16-byte aligned, as they were for that compile, launch that binary directly. Every integer
    argument is fixed by the plan, so the binary's specialisation (ints equal to 1 or divisible
    by 16, pointer alignment) holds for them."""

    __slots__ = ("kernel", "grid", "consts", "const_values", "num_warps", "n_ptr", "compiled")

    def __init__(self, kernel, grid, consts: dict, num_warps: int, n_ptr: int):
        self.kernel, self.consts, self.num_warps, self.n_ptr = kernel, consts, num_warps, n_ptr
        if not 1 <= len(grid) <= 3:
            raise ValueError(f"a launch grid has 1 to 3 dimensions, got {grid!r}")
        # the launcher takes all three grid dimensions: (n,) launches as (n, 1, 1)
        self.grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        self.const_values = tuple(consts.values())
        self.compiled = None

    def _aligned(self, args) -> bool:
        return all(t.data_ptr() % 16 == 0 for t in args[:self.n_ptr])

    def __call__(self, *args):
        compiled = self.compiled  # only ever set when direct launches are on
        if compiled is not None:
            # The pointers go to the launcher as integers: it then skips calling data_ptr() and
            # asking the driver about each pointer (cuPointerGetAttribute), a few microseconds of
            # host time per pointer. Both were settled when the plan was built: every tensor of a
            # plan is on the plan's GPU.
            n = self.n_ptr
            ptrs = [t.data_ptr() for t in args[:n]]
            if not any(p & 15 for p in ptrs) and not _launch_hooks_set():
                g = self.grid
                try:
                    compiled.run(g[0], g[1], g[2], torch._C._cuda_getCurrentRawStream(args[0].get_device()),
                                 compiled.function, compiled.packed_metadata, None, None, None,
                                 *ptrs, *args[n:], *self.const_values)
                    return
                except TypeError:  # a launcher with another signature: launch through Triton from now on
                    _disable_direct()
                    self.compiled = None
        ret = self.kernel[self.grid](*args, **self.consts, num_warps=self.num_warps)
        if _DIRECT and compiled is None and args[0].is_cuda and hasattr(ret, "packed_metadata") \
                and self._aligned(args) and not _launch_hooks_set():
            self.compiled = ret


def _num_splits(x: torch.Tensor, s: int, block_s: int, blocks: int, warps: int,
                resident: int | None = None) -> int:
    """Programs along the stream axis in backward, never more than there are stream tiles. With
    ``resident`` (programs of this compiled kernel that fit on one SM at once) the grid is one full
    wave: every program starts at once and none waits for a second wave (at ~95 registers per
    thread five 4-warp programs fit, and the old target of 32 warps per SM asked for 1.6 waves).
    Without it (not yet known, the interpreter): enough for ~32 resident warps per SM."""
    sms = _device_sms(x.device)
    if resident:
        return max(1, min(_cdiv(s, block_s), (sms * resident) // blocks))
    return max(1, min(_cdiv(s, block_s), _cdiv(sms * max(1, 32 // warps), blocks)))


def _resident_programs(n_regs: int, shared: int, warps: int, max_threads: int = 2048,
                       smem_per_sm: int = 233472, regs_per_sm: int = 65536) -> int:
    """Programs of a kernel (``n_regs`` registers per thread, ``shared`` bytes of shared memory,
    ``warps`` warps) that one SM holds at once: registers are given to warps in blocks of 256,
    every program takes 1 KiB of shared memory more than it asks for (sm_80/sm_90), at most 32
    programs per SM. H200 defaults."""
    regs_per_warp = _cdiv(max(n_regs, 1) * 32, 256) * 256
    by_regs = (regs_per_sm // regs_per_warp) // warps
    by_threads = max_threads // (32 * warps)
    by_smem = smem_per_sm // (shared + 1024) if shared else 32
    return max(1, min(by_regs, by_threads, by_smem, 32))


def _outside_graph_pools(fn, device: torch.device):
    """``fn()`` run where no CUDA graph memory pool takes its allocations: on a helper thread (the
    caller blocks on it), after the device has finished the caller's work, and synchronised again
    before returning. torch.compile's CUDA graph trees run a graph's warm-up call with every
    allocation of the calling thread going to the graphs' private pool; a tensor that outlives
    the call there (the reduction's counter pool) is reported as an untracked pool allocation
    (``Detected 1 tensor(s) in the cudagraph pool not tracked as outputs``, seen on the H200 on
    2026-12-01) and may be overwritten by a later graph; the tuner's own CUDA graphs should not
    nest in that pool either. Off CUDA (or without a GPU: unit tests), ``fn()`` is simply called."""
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
