"""The deterministic reduction of the backward's per-program partial sums into coefficient
gradients, shared by the group-rational backward and the fused LayerNorm + rational backward.

One launch where it can: the program of the first stage that finishes last also writes the
gradients (a counter in device memory says which program that is). The counters come from one
zeroed pool per device; every call leaves its counter at zero again. A stream keeps its counter
(kernels on one stream run in order, so two calls never share it at once; PyTorch's streams come
from a pool and are never destroyed, so a handle never stands for another stream); a call
captured into a CUDA graph gets a counter of its own, which the graph keeps, because a graph may
be replayed on any stream. Where no counter is available (pool used up, or a capture before the pool exists),
and with ``KAT_MERGED_REDUCTION=0``, the reduction runs as two launches.

Also here: :class:`_Workspace`, the float32 buffers a backward writes and reads back within one
call (the per-program partial sums, the reduction's scratch), kept per stream and thread instead
of allocated on every call (``KAT_REUSE_WORKSPACE=0``: allocated every call)."""
from __future__ import annotations

import os
import threading

import torch

from .launch import _Launch, _cdiv, _device_sms, _outside_graph_pools

_MERGED = os.environ.get("KAT_MERGED_REDUCTION", "1") != "0"
_REUSE = os.environ.get("KAT_REUSE_WORKSPACE", "1") != "0"

# Counters are int32 slots 16 bytes apart (the direct launch path wants 16-byte aligned pointers).
_SLOT = 4
_POOL_SLOTS = 4096
_POOLS: dict = {}          # device -> [pool tensor, next free slot]
_STREAM_COUNTERS: dict = {}  # (device, raw stream) -> counter (a view of one slot)
_LOCK = threading.Lock()  # slots are handed out once each, also when threads first launch at once


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _new_counter(device: torch.device, capturing: bool):
    with _LOCK:
        entry = _POOLS.get(device)
        if entry is None:
            if capturing:
                return None  # the pool must be zeroed outside a capture
            # allocated outside any CUDA graph pool: it lives as long as the process
            pool = _outside_graph_pools(
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


class _Workspace:
    """Float32 buffers of fixed shapes that one backward call writes and reads back before it
    returns (nothing it returns is a view of them), kept per (stream, thread) so that later calls
    skip their allocations (a few microseconds of host time each, which eager steps pay per
    rational). Kernels on one stream run in launch order, so a later call's writes never overtake
    an earlier call's reads; the thread is in the key too, so two host threads launching on one
    stream never interleave their uses. Fresh buffers instead while a CUDA graph is being captured
    (the graph must own its memory), for calls that ask for them and with
    ``KAT_REUSE_WORKSPACE=0``. Kept ones are allocated outside any CUDA graph pool (see
    ``_outside_graph_pools``) and released with the plan."""

    __slots__ = ("device", "shapes", "kept")

    def __init__(self, device: torch.device, shapes):
        self.device, self.shapes, self.kept = device, tuple(tuple(s) for s in shapes), {}

    def _fresh(self):
        return tuple(torch.empty(s, dtype=torch.float32, device=self.device) for s in self.shapes)

    def get(self, keep: bool = True):
        """The buffers (a tuple, ``shapes`` order) for a call on the current stream: the kept ones,
        or fresh ones (``keep=False``, a capture, ``KAT_REUSE_WORKSPACE=0``)."""
        dev = self.device
        if not (keep and _REUSE):
            return self._fresh()
        if dev.type == "cuda":
            if torch._C._cuda_isCurrentStreamCapturing():
                return self._fresh()
            key = (torch._C._cuda_getCurrentRawStream(dev.index), threading.get_ident())
        else:
            key = (0, threading.get_ident())
        bufs = self.kept.get(key)
        if bufs is None:
            bufs = self.kept[key] = _outside_graph_pools(self._fresh, dev)
        return bufs


class _Reduction:
    """The launches that turn the backward's partial sums, read as (rows, G, GS, NUM_ACC), into
    coefficient gradients: per (group, block of rows) sums into a (RS, G, 16) scratch, then the
    sum of the blocks (and of the groups, for a shared numerator), done by the first stage's last
    program or by a second, one-program launch. Grid and block sizes are fixed per shape, so the
    summation order, hence the result, is the same on every call and either way."""

    __slots__ = ("rows", "groups", "gs", "num_m", "num_n", "shared", "rs", "per", "partials", "merged",
                 "final", "scratch_shape")

    def __init__(self, device: torch.device, rows: int, groups: int, gs: int, num_m: int, num_n: int,
                 shared: bool, sms: int | None = None):
        from . import reduction_kernels as kernels  # lazy: ``import kat`` never imports Triton
        self.rows, self.groups, self.gs, self.num_m, self.num_n, self.shared = rows, groups, gs, num_m, num_n, shared
        block_j = min(64, _pow2(gs))
        block_r = max(1, 4096 // (block_j * 16))
        if sms is None:
            sms = _device_sms(device)
        # about two programs per SM, at most 64 row blocks (the final sum reads them all)
        rs = max(1, min(64, _cdiv(rows, block_r), _cdiv(2 * sms, groups)))
        self.per = _cdiv(rows, rs)
        self.rs = _cdiv(rows, self.per)
        self.scratch_shape = (self.rs, groups, 16)
        block_rs = _pow2(self.rs)
        final = {"SHARED": shared, "BLOCK_RS": block_rs,
                 "BLOCK_G": max(1, min(_pow2(groups), 4096 // (block_rs * 16)))}
        first = {"BLOCK_R": block_r, "BLOCK_J": block_j}
        self.partials = _Launch(kernels.coefficient_partials_kernel, (groups, self.rs),
                                {**first, "FINISH": False, **final}, 4, 5)
        self.merged = _Launch(kernels.coefficient_partials_kernel, (groups, self.rs),
                              {**first, "FINISH": True, **final}, 4, 5)
        self.final = _Launch(kernels.coefficient_grads_kernel, (1,), final, 4, 3)

    def __call__(self, partial: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                 merged: bool = True, call=_Launch.__call__, scratch: torch.Tensor | None = None):
        """(grad_numerator, grad_denominator) in the coefficients' dtypes, from ``partial``.
        ``merged=False``: two launches (for the tuner's graphs, which would use up counters, and for
        traced graphs, which should not own one); ``call(launch, *args)`` runs a launch; ``scratch``: a
        (rs, groups, 16) float32 buffer to use (see :class:`_Workspace`), else one is allocated."""
        dev = partial.device
        if scratch is None:
            scratch = torch.empty(self.scratch_shape, dtype=torch.float32, device=dev)
        gnum = torch.empty((1 if self.shared else self.groups, self.num_m), dtype=torch.float32, device=dev)
        gden = torch.empty((self.groups, self.num_n), dtype=torch.float32, device=dev)
        counter = _counter(dev) if _MERGED and merged else None
        if counter is not None:
            call(self.merged, partial, scratch, counter, gnum, gden, self.rows, self.groups, self.gs, self.per,
                 self.num_m, self.num_n)
        else:
            # the counter pointer is unused without FINISH: any aligned buffer will do
            call(self.partials, partial, scratch, scratch, gnum, gden, self.rows, self.groups, self.gs, self.per,
                 self.num_m, self.num_n)
            call(self.final, scratch, gnum, gden, self.rs, self.groups, self.num_m, self.num_n)
        if numerator.dtype != gnum.dtype:
            gnum = gnum.to(numerator.dtype)
        if denominator.dtype != gden.dtype:
            gden = gden.to(denominator.dtype)
        return gnum, gden
