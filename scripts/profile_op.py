#!/usr/bin/env python3
"""Where does the group-rational op's time go on a GPU? Kernel-only time per autotune config (with
registers/spills), host overhead per call, and a profiler trace of one forward+backward.

    PYTHONPATH=src python scripts/profile_op.py [--channels 192 768 3072] [--dtype bf16]
"""
from __future__ import annotations

import argparse
import time

import torch
from triton.testing import do_bench

import kat
from kat.ops.group_rational import function as fn
from kat.ops.group_rational import kernels as K


def sweep(kernel, configs, consts, grid_fn, args, bytes_moved, bw):
    rows = []
    for cfg in configs:
        bs, bc, w = cfg[:3]
        grid = grid_fn(bs, bc, w)
        try:
            compiled = kernel[grid](*args(bs, bc, w), **consts(cfg), num_warps=w)
            ms = do_bench(lambda: kernel[grid](*args(bs, bc, w), **consts(cfg), num_warps=w),
                          warmup=10, rep=60, return_mode="median")
            rows.append((ms, (*cfg, "uniform" if consts(cfg)["UNIFORM"] else "per-column"),
                         getattr(compiled, "n_regs", "?"), getattr(compiled, "n_spills", "?")))
        except Exception as e:  # a config the hardware rejects (registers, shared memory)
            rows.append((float("inf"), cfg, "err", str(e)[:60]))
    rows.sort(key=lambda r: r[0])
    for ms, cfg, regs, spills in rows[:5]:
        print(f"    {ms * 1e3:8.1f} us ({bytes_moved / (ms * 1e-3) / bw * 100:5.1f}% bw) "
              f"config={cfg} regs={regs} spills={spills}")
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--channels", type=int, nargs="+", default=[192, 768, 3072])
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--cprofile", action="store_true")
    args = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    src = torch.empty(1 << 29, device="cuda")
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 4 / (do_bench(lambda: dst.copy_(src), return_mode="median") * 1e-3)
    del src, dst
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    for c in args.channels:
        x = torch.randn(128, 197, c, device="cuda", dtype=dtype)
        a = (torch.randn(1, 6, device="cuda") * 0.3)
        b = (torch.randn(8, 4, device="cuda") * 0.3)
        go = torch.randn_like(x)
        xs = x.view(-1, c)
        s, ca = xs.shape
        nbytes = x.numel() * x.element_size()
        print(f"C={c} {args.dtype}: x {tuple(x.shape)}, {nbytes / 1e6:.1f} MB")
        y = torch.empty_like(xs)
        print("  forward kernel, best configs:")
        sweep(K.group_rational_fwd_kernel, K.FWD_CONFIGS, lambda cfg: fn._fwd_consts(cfg, c // 8),
              lambda bs, bc, w: (triton_cdiv(s, bs), triton_cdiv(ca, bc)),
              lambda bs, bc, w: (xs, y, a, b, s, ca, c, c // 8, 0, c, 1, c, 1), 2 * nbytes, bw)
        gx = torch.empty_like(xs)
        parts = {}

        def bwd_args(bs, bc, w):
            splits = fn._num_splits(x, s, bs, triton_cdiv(ca, bc), w)
            if (bs, bc, w) not in parts:
                parts[(bs, bc, w)] = torch.empty(splits, ca, 10, device="cuda")
            return (xs, go.view(-1, c), gx, a, b, parts[(bs, bc, w)], s, ca, c, c // 8, 0, splits, c, 1, c, 1, c, 1)

        print("  backward kernel, best configs:")
        sweep(K.group_rational_bwd_kernel, K.BWD_CONFIGS, lambda cfg: fn._bwd_consts(cfg, c // 8),
              lambda bs, bc, w: (fn._num_splits(x, s, bs, triton_cdiv(ca, bc), w), triton_cdiv(ca, bc)),
              bwd_args, 3 * nbytes, bw)

        xr = x.clone().requires_grad_()
        ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()

        def fwd():
            with torch.no_grad():
                kat.group_rational(x, a, b, impl="triton")

        def fwd_bwd():
            torch.autograd.grad(kat.group_rational(xr, ar, br, impl="triton"), (xr, ar, br), go)

        for name, f in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            f()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                f()
            host = (time.perf_counter() - t0) / 200
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 200
            dev = do_bench(f, warmup=25, rep=200, return_mode="median")
            print(f"  op {name:8s}: host {host * 1e6:7.1f} us/call, wall {wall * 1e6:7.1f} us/call, "
                  f"do_bench {dev * 1e3:7.1f} us")
        print("  tuner picks:", {k[0]: v for k, v in fn._TUNER.cache.items() if k[4] == ca and k[2] == dtype})
        if args.cprofile:
            from host_overhead import cprofile_text  # scripts/ is on sys.path when run as a script
            print(cprofile_text(fwd_bwd, 100, 14))
        if args.trace:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fwd_bwd()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))


def triton_cdiv(a, b):
    return -(-a // b)


if __name__ == "__main__":
    main()
