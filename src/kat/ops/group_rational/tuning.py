"""Kernel configs: the candidate tiles, what each means for the kernels, and choosing one per shape.

On a GPU the first plan for a shape times every candidate (replays of a CUDA graph of calls) and
keeps the fastest. Timing is noisy, so two processes could pick different configs, and the
backward's coefficient gradients (summed in a config-dependent order) would differ in their last
bits from run to run. The choice is therefore written to a JSON file (``KAT_TUNE_CACHE``, default
``~/.cache/kat/tuning.json``; ``0`` for none) keyed by GPU model, Triton version, a hash of the
kernels' source and the shape; later processes reuse it. ``KAT_AUTOTUNE=0`` takes each list's
first config without timing. Both are read when a shape is first tuned.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

# Forward configs: (BLOCK_S, BLOCK_C, warps, SELECT). SELECT evaluates the overflow-safe form for
# every element instead of testing each tile. BLOCK_C = 32 x warps x vector width gives a thread
# one 16-byte column vector across the tile's rows. Blocks narrower than 32 exist for the group
# sizes of C = 192 and 384 (24, 48), where they are UNIFORM; they are timed only there.
# First entry: the default without timing (best for bf16 (128, 197, 3072) on an H200).
GPU_FWD_CONFIGS = [
    (32, 128, 4, False), (8, 256, 1, False), (64, 64, 4, False), (16, 128, 4, False), (16, 256, 4, False),
    (8, 512, 4, False), (4, 1024, 4, False), (32, 256, 8, False), (16, 512, 8, False), (8, 256, 2, False),
    (4, 256, 1, False), (4, 256, 2, False), (8, 128, 1, False), (2, 256, 1, False), (2, 1024, 4, False),
    (4, 512, 2, False), (32, 128, 4, True), (16, 128, 4, True), (16, 256, 4, True), (8, 256, 2, True),
    (8, 256, 1, True), (4, 256, 1, True), (8, 128, 1, True),
    (32, 32, 1, False), (16, 32, 1, False), (64, 32, 2, False), (128, 32, 4, False),
    (32, 32, 2, False), (64, 32, 4, False), (128, 32, 8, False), (64, 32, 4, True),
    (128, 8, 4, False), (256, 8, 4, False), (64, 16, 2, False), (128, 16, 4, False)]
# Backward configs: (BLOCK_S, BLOCK_C, warps, ROW_REDUCE[, STAGES[, FOLD]]). ROW_REDUCE sums each
# tile's rows into per-column accumulators at once; STAGES > 0 pipelines the loads through shared
# memory instead of prefetching two tiles in registers; FOLD > 1, where a block lies in one group,
# sums a thread's FOLD columns into one accumulator per term (one partial per block). Configs
# whose sm_90 build spilled registers were dropped.
GPU_BWD_CONFIGS = [
    (8, 64, 4, False), (4, 128, 4, False), (2, 256, 1, False), (2, 512, 2, False), (1, 1024, 4, False),
    (2, 1024, 4, False), (2, 128, 1, False), (4, 128, 1, False), (16, 64, 4, False), (8, 128, 4, True),
    (16, 64, 2, True), (4, 32, 1, False), (8, 32, 2, False), (16, 32, 4, False),
    (4, 128, 4, False, 3), (4, 128, 4, False, 4), (8, 64, 4, False, 3), (2, 128, 2, False, 3),
    (8, 32, 2, False, 3), (4, 32, 1, False, 4), (2, 128, 4, False), (2, 64, 2, False), (2, 32, 1, False),
    (16, 64, 4, False, 0, 8), (16, 64, 4, False, 3, 8), (8, 128, 4, False, 3, 8), (16, 32, 2, False, 3, 8),
    (8, 32, 1, False, 3, 8), (8, 8, 1, False, 3, 8), (16, 8, 1, False, 3, 8), (32, 8, 2, False, 3, 8),
    (64, 8, 4, False, 3, 8), (16, 16, 2, False, 3, 8), (32, 16, 4, False, 3, 8)]
# Triton's interpreter (CPU, tests), where timing means nothing: the first config is the one used.
INTERPRETER_FWD_CONFIGS = [(64, 64, 4, False), (32, 64, 4, True)]
INTERPRETER_BWD_CONFIGS = [(32, 64, 4, True), (16, 64, 4, False)]


def fwd_configs(device: torch.device) -> list:
    return GPU_FWD_CONFIGS if device.type == "cuda" else INTERPRETER_FWD_CONFIGS


def bwd_configs(device: torch.device) -> list:
    return GPU_BWD_CONFIGS if device.type == "cuda" else INTERPRETER_BWD_CONFIGS


def uniform(block_c: int, group_size: int) -> bool:
    """Every block of ``block_c`` columns lies in one group: the kernels load scalar coefficients."""
    return group_size % block_c == 0


def fold(cfg, group_size: int) -> int:
    """Columns a backward thread sums into one accumulator per term (1: none)."""
    bs, bc, _warps, row_reduce, *rest = cfg
    f = rest[1] if len(rest) > 1 else 1
    return f if f > 1 and bc % f == 0 and not row_reduce and uniform(bc, group_size) else 1


def cols_first(rows: int, cfg) -> bool:
    """Column blocks on the forward grid's first axis (programs running at once read whole rows),
    unless the row blocks exceed the second axis' limit of 65535."""
    return -(-rows // cfg[0]) <= 65535


def fwd_consts(cfg, group_size: int, rows: int) -> dict:
    """The forward kernel's constexprs, in its parameter order (direct launches pass them so)."""
    bs, bc, _warps, select = cfg
    return {"BLOCK_S": bs, "BLOCK_C": bc, "SELECT": select, "UNIFORM": uniform(bc, group_size),
            "COLS_FIRST": cols_first(rows, cfg)}


def bwd_consts(cfg, group_size: int) -> dict:
    """The backward kernel's constexprs, in its parameter order."""
    bs, bc, _warps, row_reduce, *rest = cfg
    return {"BLOCK_S": bs, "BLOCK_C": bc, "ROW_REDUCE": row_reduce, "ACC_ROWS": 1 if row_reduce else bs,
            "UNIFORM": uniform(bc, group_size), "STAGES": rest[0] if rest else 0, "FOLD": fold(cfg, group_size)}


def fwd_candidates(device: torch.device, group_size: int) -> list:
    """Forward configs worth timing at this group size: narrow blocks only where they are UNIFORM."""
    configs = fwd_configs(device)
    return [c for c in configs if c[1] >= 32 or uniform(c[1], group_size)] or configs


def bwd_candidates(device: torch.device, group_size: int) -> list:
    """Backward configs worth timing: those asking to fold only where they do (elsewhere they
    repeat their unfolded twin)."""
    configs = bwd_configs(device)
    return [c for c in configs if len(c) < 6 or c[5] <= 1 or fold(c, group_size) > 1] or configs


def cache_path() -> Path | None:
    """The tuning file, or None when ``KAT_TUNE_CACHE`` is ``0`` or empty."""
    value = os.environ.get("KAT_TUNE_CACHE")
    if value is None:
        return Path.home() / ".cache" / "kat" / "tuning.json"
    return None if value.strip() in ("", "0") else Path(value)


def autotune_enabled() -> bool:  # KAT_AUTOTUNE=0: each list's first config, untimed
    return os.environ.get("KAT_AUTOTUNE", "1") != "0"


@functools.lru_cache(maxsize=None)
def _kernels_fingerprint() -> str:
    """Triton's version, the kernels' source and the timing method: a change to any of them
    invalidates stored choices."""
    import triton

    from . import kernels
    source = hashlib.sha256(Path(kernels.__file__).read_bytes()).hexdigest()[:16]
    return f"triton {triton.__version__} kernels {source} graphs"


@functools.lru_cache(maxsize=None)
def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _time_config(launch, cfg) -> float:
    """Milliseconds per ``launch(cfg)``: the median of replays of a CUDA graph of calls (GPU time
    alone; with plain launches, host time made every small-shape candidate look the same). A
    config that cannot build raises in the warm-up call."""
    from triton.testing import do_bench_cudagraph
    return do_bench_cudagraph(lambda: launch(cfg), rep=3, return_mode="median")


class Tuner:
    """Picks a config per shape key ``(kind, device, dtype, ints...)``. Unlike ``triton.autotune``
    the host knows the chosen tile, which fixes the backward's grid and its partial-sum buffer."""

    def __init__(self, autotune=autotune_enabled, time_config=_time_config, gpu_name=_gpu_name,
                 path=cache_path):
        self._autotune, self._time_config, self._gpu_name, self._path = autotune, time_config, gpu_name, path

    def pick(self, key, configs, launch):
        """The config for ``key``: stored, timed (``launch(cfg)`` runs one), or the first."""
        device = key[1]
        if len(configs) == 1 or device.type != "cuda" or not self._autotune():
            return configs[0]
        path = self._path()
        name = self._stored_name(key)
        cfg = self._load(path, name, configs) if path is not None else None
        if cfg is not None:
            return cfg
        if _capturing():
            return configs[0]  # nothing can be timed inside someone's CUDA graph capture
        from .launch import outside_graph_pools
        cfg = outside_graph_pools(lambda: self._fastest(key, configs, launch), device)
        if path is not None:
            self._save(path, name, cfg)
        return cfg

    def _fastest(self, key, configs, launch):
        best = None
        for candidate in configs:
            try:
                ms = self._time_config(launch, candidate)
            except Exception:  # out of registers / shared memory on this GPU: skip it
                continue
            if best is None or ms < best[0]:
                best = (ms, candidate)
        if best is None:
            raise RuntimeError(f"group_rational: no kernel config runs for {key}")
        return best[1]

    def _stored_name(self, key) -> str:
        kind, device, dtype, *shape = key
        index = device.index if device.index is not None else torch.cuda.current_device()
        return " | ".join([self._gpu_name(index), _kernels_fingerprint(), kind, str(dtype),
                           ",".join(str(v) for v in shape)])

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _load(self, path: Path, name: str, configs):
        stored = self._read(path).get(name)
        if isinstance(stored, list):
            for cfg in configs:
                if list(cfg) == stored:
                    return cfg
        return None  # absent, malformed, or a config the kernels no longer offer

    def _save(self, path: Path, name: str, cfg) -> None:
        """Merged into the file as it is now, written to a temporary file renamed into place, so
        concurrent processes (torchrun ranks) never see half a file."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = self._read(path)
            data[name] = list(cfg)
            fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0, sort_keys=True)
            os.replace(tmp, path)
        except OSError:  # a read-only home, a full disk: tuning still works, only not remembered
            pass
