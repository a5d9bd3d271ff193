"""The deterministic reduction of a backward's per-program partial sums into coefficient gradients,
and the buffers a backward keeps between calls. Shared with the fused LayerNorm + rational op.

One launch where it can: the first stage's program that finishes last also writes the gradients
(a counter in device memory says which one that is). Counters come from one zeroed pool per
device and every call leaves its counter at zero. A stream keeps its counter (kernels on one stream
run in order; PyTorch never destroys a stream, so a handle never stands for another); a call
captured into a CUDA graph gets a counter of its own, which the graph keeps. Where no counter is
available (pool used up, a capture before the pool exists) and for the tuner's graphs, the
reduction runs as two launches: same order, same bits.
"""
from __future__ import annotations

import threading

import torch

from .launch import Launcher, cdiv, device_sms, outside_graph_pools

_SLOT = 4  # counters are int32 slots 16 bytes apart (direct launches want 16-byte aligned pointers)
_POOL_SLOTS = 4096
_POOLS: dict = {}            # device -> [pool tensor, next free slot]
_STREAM_COUNTERS: dict = {}  # (device, raw stream) -> counter (a view of one slot)
_LOCK = threading.Lock()     # every slot is handed out once, also when threads first launch at once


def pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _new_counter(device: torch.device, capturing: bool):
    with _LOCK:
        entry = _POOLS.get(device)
        if entry is None:
            if capturing:
                return None  # the pool must be zeroed outside a capture
            pool = outside_graph_pools(
                lambda: torch.zeros(_POOL_SLOTS * _SLOT, dtype=torch.int32, device=device), device)
            entry = _POOLS[device] = [pool, 0]
        pool, nxt = entry
        if nxt >= _POOL_SLOTS:
            return None
        entry[1] = nxt + 1
    return pool[nxt * _SLOT:nxt * _SLOT + 1]


def _counter(device: torch.device):
    """The counter for a call on the current stream of ``device``, or None (two launches)."""
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return _new_counter(device, True)
        key = (device, torch._C._cuda_getCurrentRawStream(device.index))
    else:
        key = (device, 0)
    counter = _STREAM_COUNTERS.get(key)
    if counter is None:
        counter = _new_counter(device, False)
        if counter is not None:
            counter = _STREAM_COUNTERS.setdefault(key, counter)  # a racing thread's slot wins once
    return counter


class Workspace:
    """Float32 buffers that one backward call writes and reads back before it returns, kept per
    (stream, host thread) so later calls skip the allocations. Kernels on one stream run in launch
    order, so a later call's writes never overtake an earlier call's reads; the thread is in the
    key so two threads launching on one stream never interleave. Fresh buffers while a CUDA graph
    is captured (the graph must own its memory). Kept ones live outside CUDA graph pools."""

    __slots__ = ("device", "shapes", "kept")

    def __init__(self, device: torch.device, shapes):
        self.device, self.shapes, self.kept = device, tuple(tuple(s) for s in shapes), {}

    def fresh(self):
        return tuple(torch.empty(s, dtype=torch.float32, device=self.device) for s in self.shapes)

    def get(self):
        """The buffers, in ``shapes`` order, for a call on the current stream."""
        dev = self.device
        if dev.type == "cuda":
            if torch.cuda.is_current_stream_capturing():
                return self.fresh()
            key = (torch._C._cuda_getCurrentRawStream(dev.index), threading.get_ident())
        else:
            key = (0, threading.get_ident())
        bufs = self.kept.get(key)
        if bufs is None:
            bufs = self.kept[key] = outside_graph_pools(self.fresh, dev)
        return bufs


class Reduction:
    """Partial sums read as (rows, G, GS, NUM_ACC) -> (grad_numerator, grad_denominator): per
    (group, block of rows) sums into a (RS, G, 16) scratch, then the sum of the blocks (and of the
    groups, for a shared numerator). Grid and blocks are fixed per shape, so the summation order,
    hence the result, is the same on every call, in one launch or two."""

    __slots__ = ("rows", "groups", "gs", "num_m", "num_n", "shared", "rs", "per", "partials", "merged",
                 "final", "scratch_shape")

    def __init__(self, device: torch.device, rows: int, groups: int, gs: int, num_m: int, num_n: int,
                 shared: bool, sms: int | None = None):
        from . import kernels  # lazy: ``import kat`` never imports Triton
        self.rows, self.groups, self.gs, self.num_m, self.num_n, self.shared = rows, groups, gs, num_m, num_n, shared
        block_j = min(64, pow2(gs))
        block_r = max(1, 4096 // (block_j * 16))
        sms = device_sms(device) if sms is None else sms
        # about two programs per SM, at most 64 row blocks (the final sum reads them all)
        rs = max(1, min(64, cdiv(rows, block_r), cdiv(2 * sms, groups)))
        self.per = cdiv(rows, rs)
        self.rs = cdiv(rows, self.per)
        self.scratch_shape = (self.rs, groups, 16)
        block_rs = pow2(self.rs)
        final = {"SHARED": shared, "BLOCK_RS": block_rs,
                 "BLOCK_G": max(1, min(pow2(groups), 4096 // (block_rs * 16)))}
        first = {"BLOCK_R": block_r, "BLOCK_J": block_j}
        grid = (groups, self.rs)
        self.partials = Launcher(kernels.coefficient_partials_kernel, grid, {**first, "FINISH": False, **final}, 4, 5)
        self.merged = Launcher(kernels.coefficient_partials_kernel, grid, {**first, "FINISH": True, **final}, 4, 5)
        self.final = Launcher(kernels.coefficient_grads_kernel, (1,), final, 4, 3)

    def __call__(self, partial: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                 scratch: torch.Tensor | None = None, merged: bool = True):
        """Gradients in the coefficients' dtypes. ``scratch``: a float32 ``scratch_shape`` buffer
        (else allocated); ``merged=False``: two launches (the tuner's graphs would use up counters)."""
        dev = partial.device
        if scratch is None:
            scratch = torch.empty(self.scratch_shape, dtype=torch.float32, device=dev)
        gnum = torch.empty((1 if self.shared else self.groups, self.num_m), dtype=torch.float32, device=dev)
        gden = torch.empty((self.groups, self.num_n), dtype=torch.float32, device=dev)
        counter = _counter(dev) if merged else None
        ints = (self.rows, self.groups, self.gs, self.per, self.num_m, self.num_n)
        if counter is not None:
            self.merged(partial, scratch, counter, gnum, gden, *ints)
        else:  # the counter pointer is unused without FINISH: any aligned buffer will do
            self.partials(partial, scratch, scratch, gnum, gden, *ints)
            self.final(scratch, gnum, gden, self.rs, self.groups, self.num_m, self.num_n)
        if numerator.dtype != gnum.dtype:
            gnum = gnum.to(numerator.dtype)
        if denominator.dtype != gden.dtype:
            gden = gden.to(denominator.dtype)
        return gnum, gden
