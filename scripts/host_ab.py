#!/usr/bin/env python3
"""Why is KAT's eager training step slower than ViT's when its GPU work is not? A/B of the eager
step (bf16 autocast, fused AdamW, batch 128) with one thing changed at a time, in one process,
each variant timed twice in interleaved rounds:

- vit / kat: as built by timm;
- *_gc_off: Python's garbage collector off while timing (collections triggered by KAT's extra
  Python objects would land inside whatever C call was running);
- kat_modules: the GR-KAN MLPs run module by module (``kat.fused.FUSED_MLP`` off), not as one
  autograd node each;
- kat_gelu: every GroupRational replaced by torch's GELU (KAT's structure, ViT's activation);
- kat_pyfn: every GroupRational replaced by a Python autograd.Function that calls GELU and its
  backward (the cost of a Python Function in the graph, without kat's launchers);
- kat_torch: the rationals as plain PyTorch (impl="torch");
- kat_jit: kat's kernels launched through Triton's own launch path, not the direct one;
- kat_noreuse: the backward's partial-sum buffers allocated on every call (``KAT_REUSE_WORKSPACE=0``),
  not kept per stream;
- kat_nolaunch: kat's launchers (the plans' and the reductions') return without launching
  (outputs are uninitialised memory; the step's host work is otherwise the same): what the
  Triton launches themselves cost the host;
- *_frozen: gc.freeze() after a collection: the objects alive then (torch, timm, the model) leave
  the collector's generations, so a collection walks only what was created since.

Per variant: ms/step from CUDA events, the host's own ms/step (the time to issue the steps;
when it is close to ms/step the step is host-bound), and the garbage collections per step by
generation with the host time they took (gc.callbacks).

    PYTHONPATH=src python scripts/host_ab.py [--size tiny] [--json out.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
import torch.nn.functional as F


class _GeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(g, x)


class _GcStats:
    """Collections per generation and their total host time, while installed in gc.callbacks."""

    def __init__(self):
        self.count = [0, 0, 0]
        self.seconds = 0.0
        self._t = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds += time.perf_counter() - self._t


def _time(step, iters=20, warmup=5, cuda=True):
    for _ in range(warmup):
        step()
    if not cuda:  # a smoke run on the CPU: wall time only
        stats = _GcStats()
        gc.callbacks.append(stats)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        ms = (time.perf_counter() - t0) / iters * 1e3
        gc.callbacks.remove(stats)
        return ms, ms, [c / iters for c in stats.count], stats.seconds * 1e3 / iters
    torch.cuda.synchronize()
    stats = _GcStats()
    gc.callbacks.append(stats)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    host = (time.perf_counter() - t0) / iters
    end.record()
    torch.cuda.synchronize()
    gc.callbacks.remove(stats)
    return start.elapsed_time(end) / iters, host * 1e3, [c / iters for c in stats.count], stats.seconds * 1e3 / iters


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the script itself")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--variants", nargs="+", default=["vit", "kat", "vit_frozen", "kat_frozen", "kat_gc_off",
                                                     "kat_gelu", "kat_pyfn", "kat_jit"])
    args = p.parse_args()
    import timm

    import kat
    import kat.fused
    from kat.ops.group_rational import _PLANS
    from kat.ops.group_rational import launch as launching
    from kat.ops.group_rational.plan import Plan
    from kat.ops.group_rational import reduction
    from kat.ops.group_rational.reduction import _Reduction

    dev = args.device
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    steps = {}
    for fam in ("vit", "kat"):
        torch.manual_seed(0)
        model = timm.create_model(f"{fam}_{args.size}_patch16_224").to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")

        def step(model=model, opt=opt):
            with torch.autocast(dev, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
        steps[fam] = (model, step)

    kat_model = steps["kat"][0]
    real_forward = kat.GroupRational.forward
    real_launch = launching._Launch.__call__
    # the plans bind the launcher as a default argument: swap those defaults too
    real_defaults = (Plan.forward.__defaults__, Plan.backward.__defaults__, _Reduction.__call__.__defaults__)

    def set_launch(fn):
        launching._Launch.__call__ = fn
        Plan.forward.__defaults__ = (fn,)
        Plan.backward.__defaults__ = (fn, real_defaults[1][1])
        _Reduction.__call__.__defaults__ = (real_defaults[2][0], fn, *real_defaults[2][2:])

    def setup(name):
        kat.GroupRational.forward = real_forward
        # the one-node MLP bypasses GroupRational.forward: off for the variants that replace it
        kat.fused.FUSED_MLP = name not in ("kat_modules", "kat_gelu", "kat_pyfn", "kat_torch")
        reduction._REUSE = name != "kat_noreuse"
        kat.set_rational_impl(kat_model, "auto")
        launching._DIRECT = True
        set_launch(real_launch)
        gc.enable()
        gc.unfreeze()
        if name.endswith("_frozen"):
            gc.collect()
            gc.freeze()
        if name.endswith("_gc_off"):
            gc.collect()
            gc.disable()
        if name == "kat_gelu":
            kat.GroupRational.forward = lambda self, t: F.gelu(t)
        elif name == "kat_pyfn":
            kat.GroupRational.forward = lambda self, t: _GeluFn.apply(t)
        elif name == "kat_torch":
            kat.set_rational_impl(kat_model, "torch")
        elif name == "kat_nolaunch":
            set_launch(lambda self, *a: None)
        elif name == "kat_jit":
            launching._DIRECT = False
            _PLANS.clear()  # new launchers, which never take the direct path while _DIRECT is off
            kat.fused._MLP_PLANS.clear()
        if name.split("_")[0] not in steps:
            raise SystemExit(f"unknown variant {name!r}")
        return steps[name.split("_")[0]][1]

    names = args.variants
    results = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            results[n].append(_time(setup(n), args.iters, 5 if dev == "cuda" else 1, dev == "cuda"))
            if n == "kat_jit":
                launching._DIRECT = True
                _PLANS.clear()
                kat.fused._MLP_PLANS.clear()
            set_launch(real_launch)
            gc.enable()
            gc.unfreeze()
            ms, host, counts, gc_ms = results[n][-1]
            print(f"round {r} {n:12s} {ms:7.2f} ms/step  host {host:7.2f} ms/step  gc per step "
                  f"{counts[0]:.2f}/{counts[1]:.2f}/{counts[2]:.2f} (gen 0/1/2) {gc_ms:.2f} ms", flush=True)
    kat.GroupRational.forward = real_forward
    kat.fused.FUSED_MLP = True
    set_launch(real_launch)
    summary = {n: {"ms_per_step": statistics.median(r[0] for r in v),
                   "host_ms_per_step": statistics.median(r[1] for r in v),
                   "gc_ms_per_step": statistics.median(r[3] for r in v)} for n, v in results.items()}
    for n, s in summary.items():
        print(f"{n:12s} {s['ms_per_step']:7.2f} ms/step  host {s['host_ms_per_step']:7.2f}  "
              f"gc {s['gc_ms_per_step']:5.2f}  vs vit x{summary['vit']['ms_per_step'] / s['ms_per_step']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"size": args.size, "batch": args.batch, "torch": torch.__version__, "results": results,
                       "summary": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
