#!/usr/bin/env python3
"""How long DDP's gradient all-reduce takes on this host, without the model: each rank all-reduces
a gradient-sized fp32 buffer (default: KAT-S's parameter count) whole and in DDP-sized buckets,
over NCCL on GPUs (gloo on CPUs), and rank 0 prints the time and the bus bandwidth
(2 (n-1)/n x bytes / time, NCCL's convention). Part of the multi-GPU efficiency question:
is the time a 2-GPU step loses in the all-reduce, or elsewhere (host, DDP's reducer)?

    torchrun --standalone --nproc_per_node=2 benchmarks/allreduce.py [--model kat_small_patch16_224]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def _numel(model: str) -> int:
    import timm

    import kat  # noqa: F401  (registers the KAT models)
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(model).parameters() if p.requires_grad)


def _time(fn, device, iters: int) -> float:
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t) / iters


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="kat_small_patch16_224")
    p.add_argument("--numel", type=int, default=None, help="buffer size in elements (default: the model's)")
    p.add_argument("--bucket-mb", type=float, nargs="+", default=[25.0, 100.0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    numel = args.numel or _numel(args.model)
    grad = torch.ones(numel, device=device)
    # correctness first: the sum of every rank's ones is the world size
    dist.all_reduce(grad)
    if not bool((grad == world).all()):
        raise SystemExit(f"rank {rank}: all_reduce gave {grad[:4].tolist()}, expected {world}")
    nbytes = numel * 4
    rows = {"world": world, "backend": dist.get_backend(), "numel": numel,
            "whole_ms": 1e3 * _time(lambda: dist.all_reduce(grad), device, args.iters)}
    for mb in args.bucket_mb:
        step = max(1, int(mb * 2**20 / 4))
        buckets = list(grad.split(step))
        rows[f"buckets_{mb:g}mb_ms"] = 1e3 * _time(lambda: [dist.all_reduce(b) for b in buckets], device, args.iters)
    if rank == 0:
        bus = 2 * (world - 1) / world * nbytes
        print(f"{world} ranks ({rows['backend']}), {nbytes / 1e6:.1f} MB of fp32 gradients "
              f"({args.model if not args.numel else 'given size'}):")
        for key, ms in rows.items():
            if key.endswith("_ms"):
                print(f"  {key[:-3]:>16}: {ms:8.3f} ms, bus bandwidth {bus / (ms * 1e-3) / 1e9:7.1f} GB/s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
