#!/usr/bin/env python3
"""Host (CPU) time per call of the pieces of a KAT block, on a GPU, with tensors small enough that
the GPU is never the bottleneck: what eager mode pays in Python/dispatch/launch per op.

    PYTHONPATH=src python scripts/host_overhead.py [--json out.json]

Each row: microseconds of host time per call (median of 5 loops of N calls, synchronised only
around the loop, so the launch queue never fills).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def host_us(fn, n=100, loops=5):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(loops):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        ts.append((time.perf_counter() - t0) / n * 1e6)
        torch.cuda.synchronize()
    return statistics.median(ts)


def cprofile_text(fn, calls: int, rows: int) -> str:
    """cProfile of ``calls`` calls of ``fn`` (between GPU syncs), the top ``rows`` by own time."""
    import cProfile
    import io
    import pstats
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(rows)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", default=None)
    p.add_argument("--cprofile", action="store_true", help="also profile the op's forward+backward")
    args = p.parse_args()
    import timm
    import triton
    import triton.language as tl

    import kat
    from kat.ops.group_rational import function as F

    dev = "cuda"
    c = 192
    x = torch.randn(4, 197, c, device=dev, dtype=torch.bfloat16)
    xg = x.clone().requires_grad_()
    go = torch.randn_like(x)
    a = (torch.randn(1, 6, device=dev) * 0.3).requires_grad_()
    b = (torch.randn(8, 4, device=dev) * 0.3).requires_grad_()
    ln = torch.nn.LayerNorm(c).to(dev)
    lin = torch.nn.Linear(c, 4 * c).to(dev)

    @triton.jit
    def _copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + o, tl.load(x_ptr + o, mask=o < n), mask=o < n)

    y = torch.empty_like(x)
    ck = _copy[(1,)](x, y, x.numel(), BLOCK=1024)
    nel = x.numel()
    getstream = torch._C._cuda_getCurrentRawStream

    def direct_copy():
        ck.run(1, 1, 1, getstream(0), ck.function, ck.packed_metadata, None, None, None, x, y, nel, 1024)

    class Ident(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, g):
            return g

    mlp = timm.layers.Mlp(c, 4 * c).to(dev)
    grkan = kat.GRKAN(c, 4 * c).to(dev)
    xm = torch.randn(4, 197, c, device=dev).requires_grad_()
    gm = torch.randn_like(xm)

    def fb(mod):
        def f():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = mod(xm)
            out.backward(gm)
        return f

    import kat.fused
    from kat.ops.group_rational import plan_for
    from kat.ops.group_rational import reduction as R
    plan = plan_for(x, a, b, "triton")
    a6, b4 = a.detach(), b.detach()
    gx_buf, partial = torch.empty_like(x), torch.empty(plan.partial_shape, device=dev)
    bwd_args = (x, go, gx_buf, a6, b4, partial, *plan.x_args, plan.partial_shape[0], *plan.x_stride, plan.c, 1,
                plan.c, 1)
    fwd_args = (x, y, a6, b4, *plan.x_args, *plan.x_stride, plan.c, 1)

    def flag(obj, name, value, f):
        """f with obj.name set to value (then restored)."""
        def g():
            old = getattr(obj, name)
            setattr(obj, name, value)
            try:
                f()
            finally:
                setattr(obj, name, old)
        return g

    rows = {
        "torch.empty": lambda: torch.empty((4, 197, c), device=dev, dtype=torch.bfloat16),
        "torch.empty_like": lambda: torch.empty_like(x),
        "gelu fwd": lambda: torch.nn.functional.gelu(x),
        "gelu fwd+bwd": lambda: torch.autograd.grad(torch.nn.functional.gelu(xg), xg, go),
        "layer_norm fwd": lambda: ln(x.float()),
        "linear fwd (fp32)": lambda: lin(x.float()),
        "sum (partials-sized)": lambda: a.sum(0),
        "triton copy, JIT launch": lambda: _copy[(1,)](x, y, nel, BLOCK=1024),
        "triton copy, CompiledKernel.run": direct_copy,
        "autograd.Function identity fwd+bwd": lambda: torch.autograd.grad(Ident.apply(xg), xg, go),
        "kat op fwd (launcher only)": lambda: F._forward(x, a, b, -1),
        "kat op bwd (launcher only)": lambda: F._backward(go, x, a, b, -1),
        "kat op fwd, no grad": lambda: kat.group_rational(x, a, b, impl="triton"),
        "kat op fwd+bwd": lambda: torch.autograd.grad(kat.group_rational(xg, a, b, impl="triton"), (xg, a, b), go),
        "plan.forward": lambda: plan.forward(x, a6, b4),
        "plan.backward": lambda: plan.backward(go, x, a6, b4),
        "plan.backward, fresh buffers": flag(R, "_REUSE", False, lambda: plan.backward(go, x, a6, b4)),
        "plan's fwd launch alone": lambda: plan.fwd(*fwd_args),
        "plan's bwd launch alone": lambda: plan.bwd(*bwd_args),
        "plan's coefficient reduction alone": lambda: plan.red(partial, a6, b4),
        "reduction counter lookup": lambda: R._counter(x.device),
        "is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
        "timm Mlp fwd+bwd (autocast)": fb(mlp),
        "GRKAN fwd+bwd (autocast), one node": fb(grkan),
        "GRKAN fwd+bwd (autocast), module by module": flag(kat.fused, "FUSED_MLP", False, fb(grkan)),
    }
    out = {}
    for name, f in rows.items():
        out[name] = host_us(f)
        print(f"{name:40s} {out[name]:8.1f} us")
    if args.cprofile:
        print(cprofile_text(rows["kat op fwd+bwd"], 300, 22))
        print(cprofile_text(rows["GRKAN fwd+bwd (autocast), one node"], 300, 30))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
