#!/usr/bin/env python3
"""Host cost of the rationals in a torch.compile'd training step, measured on a CPU machine.

The kernels are stubbed out (every launch of kat's plans returns at once) and the input is tiny
(batch 2, 32x32 images), so the KAT-T step minus the ViT-T step, both compiled by Inductor for the
CPU, is mostly what the 24 rational calls per step cost the host through the opaque custom ops
(dispatch, plan lookup, allocations, launch code). The numbers are this machine's, not a GPU
host's; BENCHMARKS.md says how they compare. Runs in the Triton interpreter's mode so the plans
exist without a GPU.

    TRITON_INTERPRET=1 PYTHONPATH=src python scripts/compiled_host_cpu.py
"""
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402

import kat  # noqa: E402,F401  (registers the models)
from kat.ops.group_rational import launch  # noqa: E402


def make_step(name: str, **kw):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=32, **kw)
    compiled = torch.compile(model, dynamic=False)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 1000, (2,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(compiled(x), y)
        loss.backward()

    for _ in range(3):
        step()
    return step


def round_ms(step, n: int = 20) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n * 1e3


def main():
    launch._Launch.__call__ = lambda self, *args: None  # no kernels: host work only
    torch.set_num_threads(2)
    steps = {"ViT-T": make_step("vit_tiny_patch16_224"),
             "KAT-T": make_step("kat_tiny_patch16_224", rational_impl="triton")}
    best = {k: float("inf") for k in steps}
    for _ in range(10):  # interleaved rounds: the machine's speed drifts; the minimum of each side
        for k, step in steps.items():
            best[k] = min(best[k], round_ms(step))
    diff = best["KAT-T"] - best["ViT-T"]
    print(f"compiled train step, min of 10 interleaved rounds of 20: ViT-T {best['ViT-T']:.2f} ms, KAT-T "
          f"{best['KAT-T']:.2f} ms (kernels stubbed), difference {diff:.2f} ms = {diff / 24 * 1e3:.0f} us per "
          f"rational forward + backward")


if __name__ == "__main__":
    main()
