#!/usr/bin/env python3
"""Where a training step's time goes, KAT beside ViT, on one GPU (bf16 autocast, fused AdamW, the
step `kat-bench model` times):

- eager ms/step against the same step replayed from a CUDA graph (the GPU's own time): their
  difference is what the host adds when it cannot keep the GPU fed;
- host-device synchronisations per step (PyTorch's sync debug mode) and how kat's kernels were
  launched (directly or through Triton's JIT path), over a few warm steps;
- torch.profiler tables of each model's step sorted by host (self CPU) time, so the KAT-minus-ViT
  host time can be attributed to operators (the rational's Function, launches, reductions, ...),
  and by GPU time, so the GPU-side difference can be attributed to kernels.

- with --compile MODE both models run through torch.compile (Dynamo reset per model): graphs and
  graph breaks Dynamo made, kernel launches per step from the profiler (the host cost of a compiled
  step is mostly launches, Inductor's and kat's custom ops'), and the same host/GPU tables.

    PYTHONPATH=src python scripts/profile_step.py --size tiny [--fuse-norm-act1] [--compile MODE]
        [--order kat vit kat] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _step_checks(step, steps: int = 3) -> dict:
    """Over a few warm eager steps: host-device synchronisations PyTorch reports (sync debug mode;
    one per step would serialise host and GPU time), and how the kernels of kat's launchers went
    out: directly through the compiled binary, or through Triton's per-call JIT path (slower on
    the host; expected only on a kernel's first call)."""
    import collections
    import warnings

    from kat.ops.group_rational import launch as launch_mod
    from kat.ops.group_rational.launch import _Launch
    launches = collections.Counter()
    real_call = _Launch.__call__

    def counting(self, *a):
        # the same test __call__ makes: a compiled binary, aligned pointers and no launch hooks
        direct = self.compiled is not None and self._aligned(a) and not launch_mod._launch_hooks_set()
        kind = "direct" if direct else ("triton-jit (hooks set)" if launch_mod._launch_hooks_set() else
                                        "triton-jit")
        launches[f"{getattr(self.kernel, '__name__', '?')} {kind}"] += 1
        return real_call(self, *a)

    _Launch.__call__ = counting
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    finally:
        _Launch.__call__ = real_call
    syncs = collections.Counter(str(w.message).splitlines()[0][:100] for w in caught
                                if "synchroniz" in str(w.message).lower())
    return {"syncs_per_step": sum(syncs.values()) / steps, "sync_messages": dict(syncs),
            "kat_launches_per_step": {k: v / steps for k, v in sorted(launches.items())}}


def _cprofile(step, path, steps: int = 5, rows: int = 40) -> None:
    """Python-level host time of a few warm eager steps (cProfile, by own time): where the host
    spends time outside PyTorch's operators, e.g. in kat's launchers or Triton's JIT path."""
    from host_overhead import cprofile_text  # scripts/ is on sys.path when this script runs
    path.write_text(f"cProfile of {steps} eager steps, by own time:\n{cprofile_text(step, steps, rows)}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=".")
    p.add_argument("--fuse-norm-act1", action="store_true", help="KAT with norm2 + act1 fused (NormAct1)")
    p.add_argument("--compile", default=None, choices=["default", "reduce-overhead"],
                   help="profile the step of torch.compile'd models (no CUDA-graph timing then)")
    p.add_argument("--order", nargs="+", default=["vit", "kat"], choices=["vit", "kat"],
                   help="models in the order profiled (repeat one to see drift within the run)")
    args = p.parse_args()
    import timm

    import kat  # noqa: F401  (registers the KAT models)
    from kat.cli.bench import _graphed, _time_loop
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_compile_{args.compile}" if args.compile else ""
    summary = {}
    for i, fam in enumerate(args.order):
        name = f"{fam}_{args.size}_patch16_224"
        torch.manual_seed(0)
        kw = {"fuse_norm_act1": True} if fam == "kat" and args.fuse_norm_act1 else {}
        model = timm.create_model(name, **kw).cuda().train()
        tag = name if args.order.count(fam) == 1 else f"{name}_{i}"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True, capturable=True)
        x = torch.randn(args.batch, 3, 224, 224, device="cuda")
        y = torch.randint(0, 1000, (args.batch,), device="cuda")
        run = model
        if args.compile:
            from torch import _dynamo as dynamo
            from torch._dynamo.utils import counters
            dynamo.reset()  # timm's ViTs (KAT too) share forward's code object
            counters.clear()
            run = torch.compile(model, mode=args.compile, dynamic=False)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(run(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)

        eager = _time_loop(step, args.steps, 5)
        if args.compile:
            summary[tag + "_dynamo"] = {
                "unique_graphs": counters["stats"].get("unique_graphs", 0),
                "graph_breaks": dict(counters["graph_break"])}
            print(f"{tag}: dynamo {summary[tag + '_dynamo']}")
        summary[tag + "_checks"] = _step_checks(step)
        _cprofile(step, out / f"cprofile_{tag}{suffix}.txt")
        print(f"{tag}: {summary[tag + '_checks']}")
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        # and the same 5 steps by GPU time: which kernels (the rational's, the reductions, casts)
        kernels = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
        (out / f"profile_{tag}{suffix}.txt").write_text(f"By host time (self CPU), 5 steps:\n{table}\n\n"
                                                 f"By GPU time (self CUDA), 5 steps:\n{kernels}\n")
        events = prof.key_averages()
        host_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / 5
        gpu_ms = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e3 / 5
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                              "cudaLaunchKernelExC", "cudaGraphLaunch")) / 5
        graph = None if args.compile else _time_loop(_graphed(step), args.steps, 3)
        summary[tag] = {"eager_ms": eager * 1e3, "graph_ms": graph and graph * 1e3,
                         "profiled_host_ms_per_step": host_ms, "profiled_gpu_ms_per_step": gpu_ms,
                         "launches_per_step": launches}
        print(f"{tag}: {'compiled (' + args.compile + ')' if args.compile else 'eager'} {eager * 1e3:.2f} ms/step"
              + ("" if graph is None else f", CUDA graph {graph * 1e3:.2f} ms/step")
              + f"; profiled per step: host (self CPU) {host_ms:.2f} ms, GPU kernels {gpu_ms:.2f} ms, "
              f"{launches:.0f} kernel/graph launches")
        print("\n".join(table.splitlines()[:18]))
        del model, opt, run
        torch.cuda.empty_cache()
    (out / f"profile_step{suffix}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
