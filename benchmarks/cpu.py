#!/usr/bin/env python3
"""KAT beside timm's ViT on the CPU: the table "KAT vs ViT on the CPU" of BENCHMARKS.md.

    python benchmarks/cpu.py [--sizes tiny small] [--threads 1 2] [--batch 8] [--reps 3] [--onnx] [--compile]

fp32, 224², batch 8. For each thread count and size, ViT and KAT stay resident and their timing
loops alternate (ViT, KAT, ViT, KAT, ...), ``--reps`` times; img/s are medians, ratios the median of
the per-repeat KAT/ViT ratios. Inference: ``eval()`` under ``torch.no_grad()``; training: forward,
cross-entropy, backward and an AdamW step. ``--onnx`` also exports both models
(``kat.export_onnx``) and times them in onnxruntime the same way; ``--compile`` times
``torch.compile(model)`` (default mode) instead of the eager models (compilation before timing).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch

import kat


def _seconds(step, iters: int) -> float:
    step()  # warm-up
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t) / iters


def _torch_steps(name: str, batch: int, compile: bool = False):
    torch.manual_seed(0)
    model = timm.create_model(name)
    run = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, model.num_classes, (batch,))

    def train():
        model.train()
        torch.nn.functional.cross_entropy(run(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        model.eval()
        with torch.no_grad():
            run(x)

    return {"train": train, "infer": infer}, model


def _onnx_step(model, batch: int, threads: int, folder: Path):
    import onnxruntime as ort
    path = folder / f"{id(model)}.onnx"
    kat.export_onnx(model.eval(), path, batch_size=batch)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: torch.randn(batch, 3, 224, 224).numpy()}
    return lambda: session.run(None, feed)


def _pair(steps: dict, phases, reps: int, iters: int) -> dict:
    times = {(m, p): [] for m in steps for p in phases}
    for phase in phases:
        for _ in range(reps):
            for m in steps:
                times[(m, phase)].append(_seconds(steps[m][phase], iters))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--onnx", action="store_true", help="also time the exported models in onnxruntime")
    p.add_argument("--compile", action="store_true", help="time torch.compile(model) instead of eager")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, timm {timm.__version__}, batch {args.batch}, fp32, 224x224"
          + (", torch.compile(model)" if args.compile else ""))
    print("| threads | size | what | ViT img/s | KAT img/s | KAT / ViT (per rep) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            torch.set_num_threads(threads)
            if args.compile:  # Inductor's C++ code is generated for the thread count it compiled under
                torch._dynamo.reset()
            for size in args.sizes:
                names = {"vit": f"vit_{size}_patch16_224", "kat": f"kat_{size}_patch16_224"}
                built = {m: _torch_steps(n, args.batch, args.compile) for m, n in names.items()}
                steps = {m: b[0] for m, b in built.items()}
                phases = ["infer", "train"]
                if args.onnx:
                    for m, (_, model) in built.items():
                        steps[m]["onnxruntime"] = _onnx_step(model, args.batch, threads, Path(tmp))
                    phases.append("onnxruntime")
                times = _pair(steps, phases, args.reps, args.iters)
                for phase in phases:
                    vit, kt = times[("vit", phase)], times[("kat", phase)]
                    ratios = [v / k for v, k in zip(vit, kt)]
                    print(f"| {threads} | {size} | {phase} | {args.batch / statistics.median(vit):.1f} | "
                          f"{args.batch / statistics.median(kt):.1f} | **{statistics.median(ratios):.2f}** "
                          f"({', '.join(f'{r:.2f}' for r in ratios)}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
