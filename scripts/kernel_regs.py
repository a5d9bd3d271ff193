#!/usr/bin/env python3
"""Registers and spills of the group-rational kernels for a GPU target, without a GPU.

triton.compile runs the whole backend for the target (here sm_90, the H200's) and Triton's bundled
ptxas reports what each config costs. Register pressure decides occupancy, which decides how much
memory latency a kernel can hide, so this is a quick first check of a kernel change before device
time is spent on it (the numbers are Triton-version dependent: compare within one install).

    python scripts/kernel_regs.py [--dtype bf16] [--arch 90] [--all]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, not for the interpreter
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kat.ops.group_rational import function as fn  # noqa: E402
from kat.ops.group_rational import kernels  # noqa: E402

def _ptxas() -> str:
    import triton.backends.nvidia as nvidia
    for root, _dirs, files in os.walk(os.path.dirname(nvidia.__file__)):
        if "ptxas" in files:
            return os.path.join(root, "ptxas")
    raise SystemExit("Triton's bundled ptxas was not found")


def usage(kernel, constexprs: dict, warps: int, dtype: str, arch: int) -> str:
    sig = kernels.compile_signature(kernel, dtype)
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        err = subprocess.run([_ptxas(), f"-arch=sm_{arch}a", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = next((line.split("Used")[1].split(",")[0].strip() for line in err.splitlines() if "Used" in line), "?")
    spills = next((line.split(",")[1].strip() for line in err.splitlines() if "spill stores" in line), "?")
    return f"{regs}, {spills}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--all", action="store_true", help="every config (default: the first five of each)")
    args = p.parse_args()
    n = None if args.all else 5
    for cfg in kernels.FWD_CONFIGS[:n]:
        print(f"forward  {cfg}: {usage(kernels.group_rational_fwd_kernel, fn._fwd_consts(cfg), cfg[2], args.dtype, args.arch)}")
    for cfg in kernels.BWD_CONFIGS[:n]:
        print(f"backward {cfg}: {usage(kernels.group_rational_bwd_kernel, fn._bwd_consts(cfg), cfg[2], args.dtype, args.arch)}")


if __name__ == "__main__":
    main()
