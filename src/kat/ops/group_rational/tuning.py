"""Choosing the kernels' tile config per shape, and remembering the choice across processes.

On a GPU the first call of a new shape times every candidate config (replays of a CUDA graph of
calls) and keeps the fastest. Timing is noisy, so two processes could pick different configs for
one shape, and the backward's coefficient gradients, summed in a config-dependent order, would
then differ in their last bits between runs. The choice is therefore also written to a small JSON file
(``KAT_TUNE_CACHE``, default ``~/.cache/kat/tuning.json``; ``0`` turns the file off), keyed by GPU
model, Triton version, a hash of the kernels' source and the shape: later processes on that machine
reuse it, so they run the same configs (bitwise-reproducible gradients from run to run) and skip
the timing. Unreadable files and entries naming configs the current kernels do not offer are
ignored; writes go to a temporary file renamed into place, so concurrent processes (the ranks of
a torchrun job) never see half a file, and the last writer's view of the others' entries is
merged in.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .launch import _outside_graph_pools

_ENV = "KAT_TUNE_CACHE"
_TIMING = "graphs"  # how _time_config times: choices made another way (do_bench) are not reused


def cache_path() -> Path | None:
    """The tuning file, or None when ``KAT_TUNE_CACHE`` is ``0`` or empty."""
    value = os.environ.get(_ENV)
    if value is None:
        return Path.home() / ".cache" / "kat" / "tuning.json"
    if value.strip() in ("", "0"):
        return None
    return Path(value)


@functools.lru_cache(maxsize=None)
def _kernels_fingerprint() -> str:
    """Triton's version, the kernels' source (the backward's choice is timed with the reduction
    after it) and how configs are timed: a change to any invalidates stored choices."""
    import triton

    from . import kernels, reduction_kernels
    source = Path(kernels.__file__).read_bytes() + Path(reduction_kernels.__file__).read_bytes()
    return f"triton {triton.__version__} kernels {hashlib.sha256(source).hexdigest()[:16]} {_TIMING}"


@functools.lru_cache(maxsize=None)
def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _time_config(launch, cfg) -> float:
    """Milliseconds per ``launch(cfg)``, timed by Triton's ``do_bench_cudagraph``: calls captured into
    one CUDA graph (on a side stream, after a warm-up call that compiles), the median of its replays.
    On the GPU alone: with plain launches (``do_bench``) a backward config and its reduction cost more
    host time than GPU time on small shapes, so every candidate measured about the same and the pick
    was noise (2026-11-30, H200: C = 768 bf16 fwd+bwd 0.095 ms with that pick, 0.077 with the
    kernel-only pick before). A config that cannot build raises in the warm-up call."""
    from triton.testing import do_bench_cudagraph
    return do_bench_cudagraph(lambda: launch(cfg), rep=3, return_mode="median")


class Tuner:
    """Picks a kernel config per shape key, ``(kind, device, dtype, ints...)``. Unlike
    triton.autotune the host knows the chosen tile, which fixes the backward grid and the size of
    its partial-sum buffer. ``autotune=False`` (``KAT_AUTOTUNE=0``) takes each list's first config."""

    def __init__(self, autotune: bool = True, time_config=_time_config, gpu_name=_gpu_name, path=cache_path):
        self.cache: dict = {}
        self.autotune = autotune
        self._time_config, self._gpu_name, self._path = time_config, gpu_name, path

    def pick(self, key, configs, launch):
        cfg = self.cache.get(key)
        if cfg is not None:
            return cfg
        if len(configs) == 1 or key[1].type != "cuda" or not self.autotune:
            cfg = configs[0]
        else:
            path = self._path()
            name = self._stored_name(key)
            cfg = self._load(path, name, configs) if path is not None else None
            if cfg is None and _capturing():
                # first use of a shape inside someone's CUDA graph capture: nothing can be timed
                # (or synchronised) there, so the first config, kept for this process only
                cfg = configs[0]
            elif cfg is None:
                # timed on a helper thread: a first call in a CUDA graph tree's warm-up must not
                # allocate (or capture the tuner's graphs) in the tree's pool
                cfg = _outside_graph_pools(lambda: self._fastest(key, configs, launch), key[1])
                if path is not None:
                    self._save(path, name, cfg)
        self.cache[key] = cfg
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
