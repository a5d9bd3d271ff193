#!/usr/bin/env python3
"""Does KAT train where ViT trains? The one-batch stress test of issue #28 (its GPU table is in
RESULTS.md; tests/models/test_robust_training.py is its CPU-sized check).

    python benchmarks/one_batch.py [--sizes tiny small base] [--lrs 1e-4 3e-4 1e-3 3e-3]
                                   [--steps 60] [--batch 128] [--kat-kwargs K=V,...] [--json FILE]

For each size: timm's ViT, KAT (swish init, the released models' default) and KAT with GELU init,
each trained from the same seed on ONE fixed batch of random 224x224 images with random labels of
1000 classes, with ``torch.optim.AdamW(model.parameters(), lr=lr)`` (torch's defaults otherwise), no
warm-up, no clipping, bf16 autocast on CUDA (fp32 on the CPU). A model that learns memorises the
batch; the loss starts near ln(1000) = 6.9. Printed per run: the loss at step 0, 10 and ``--steps``,
and the highest loss after step 0 (a spike, or a collapse when it stays near ln(batch)).
``--kat-kwargs attn_init=mimetic`` builds the KATs with the official code's attention init (the
default before it was found to be what collapses); ``--device cpu --img 64 --batch 64`` is a
CPU-sized version.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import timm
import torch

import kat  # noqa: F401  (registers the KAT models)
from kat.cli.common import parse_kwargs

MODELS = ("vit_{size}_patch16_224", "kat_{size}_patch16_224", "kat_{size}_gelu_patch16_224")


def train_one_batch(name: str, lr: float, *, steps: int, batch: int, device: str, img: int = 224,
                    seed: int = 0, model_kwargs: dict | None = None) -> list[float]:
    """The loss before each of ``steps`` AdamW steps and after the last, on one fixed random batch."""
    torch.manual_seed(seed)
    model = timm.create_model(name, img_size=img, **(model_kwargs or {})).to(device).train()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, img, img, generator=gen).to(device)
    y = torch.randint(0, model.num_classes, (batch,), generator=gen).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps + 1):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        if step < steps:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return losses


def summary(losses: list[float]) -> dict:
    finite = [v if math.isfinite(v) else float("inf") for v in losses]
    return {"step0": finite[0], "step10": finite[min(10, len(finite) - 1)], "last": finite[-1],
            "max_after_0": max(finite[1:]) if len(finite) > 1 else finite[0]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3, 3e-3])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kat-kwargs", type=parse_kwargs, default={}, help="passed to the KAT models only")
    p.add_argument("--json", help="write every run's per-step losses here")
    args = p.parse_args(argv)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    runs = []
    print(f"{'model':34s} {'lr':>7s} {'step0':>7s} {'step10':>7s} {'last':>7s} {'max>0':>7s}  s")
    for size in args.sizes:
        for lr in args.lrs:
            for pattern in MODELS:
                name = pattern.format(size=size)
                t = time.perf_counter()
                losses = train_one_batch(name, lr, steps=args.steps, batch=args.batch, device=args.device,
                                         img=args.img, model_kwargs=args.kat_kwargs if name.startswith("kat") else {})
                s = summary(losses)
                print(f"{name:34s} {lr:7.0e} {s['step0']:7.3f} {s['step10']:7.3f} {s['last']:7.3f} "
                      f"{s['max_after_0']:7.3f} {time.perf_counter() - t:4.0f}", flush=True)
                runs.append({"model": name, "lr": lr, **s, "losses": losses})
                if args.json:  # rewritten after every run: a run cut short keeps what it finished
                    with open(args.json, "w") as f:
                        json.dump({"args": vars(args), "torch": torch.__version__, "timm": timm.__version__,
                                   "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
