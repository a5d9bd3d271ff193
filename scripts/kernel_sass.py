#!/usr/bin/env python3
"""Instructions per element of the group-rational kernels on sm_90, without a GPU.

Compiles a kernel config for the H200's architecture with the specialisation a real call gets
(unit channel strides, 16-divisible sizes and pointers), disassembles the cubin with Triton's
bundled cuobjdump and counts SASS instructions: for the backward, those of its tile loop per
element a thread handles per iteration; for the forward, those before its first exit (the path
of tiles that need no overflow fix-up) per element per thread. When the bf16 kernels are bound by
instruction issue rather than memory (BENCHMARKS.md), this is the number a kernel change moves.

    python scripts/kernel_sass.py [--dtype bf16] [--fwd 32,128,4,0] [--bwd 8,64,4,0[,STAGES]] [--group-size 384] [--ops]
"""
from __future__ import annotations

import argparse
import collections
import os
import re
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

_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def _sass(kernel, constexprs: dict, warps: int, dtype: str, aligned: tuple[str, ...]) -> list[tuple[int, str]]:
    names = [p.name for p in kernel.params]
    sig = kernels.compile_signature(kernel, dtype)
    for k in constexprs:
        sig[k] = "constexpr"
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        text = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    regs = re.search(r"REG:(\d+)", usage)
    print(f"  ({kernel.__name__}: {regs.group(1) if regs else '?'} registers per thread)")
    return [(int(m.group(1), 16), m.group(2)) for m in map(_LINE.match, text.splitlines()) if m]


def _opcode(ins: str) -> str:
    ins = re.sub(r"^@!?U?P\w+\s+", "", ins)
    return ins.split()[0].split(".")[0]


def _report(title: str, body: list[str], per_thread: int, show_ops: bool) -> None:
    fp = sum(_opcode(i) in ("FFMA", "FMUL", "FADD", "FMNMX", "MUFU", "FSEL", "FSETP") for i in body)
    print(f"{title}: {len(body)} instructions for {per_thread} elements per thread = "
          f"{len(body) / per_thread:.1f} per element ({fp / per_thread:.1f} floating-point)")
    if show_ops:
        print("   ", collections.Counter(map(_opcode, body)).most_common(16))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--fwd", default=",".join(str(int(v)) for v in kernels.FWD_CONFIGS[0]))
    p.add_argument("--bwd", default=",".join(str(int(v)) for v in kernels.BWD_CONFIGS[0]))
    p.add_argument("--group-size", type=int, default=0,
                   help="channels per group (a multiple of the block width compiles the UNIFORM variant)")
    p.add_argument("--ops", action="store_true", help="also list the most frequent opcodes")
    args = p.parse_args()

    bs, bc, warps, select = (int(v) for v in args.fwd.split(","))
    cfg = (bs, bc, warps, bool(select))
    consts = dict(fn._fwd_consts(cfg, args.group_size), stride_xc=1, stride_yc=1)
    sass = _sass(kernels.group_rational_fwd_kernel, consts, warps, args.dtype,
                 ("x_ptr", "y_ptr", "a_ptr", "b_ptr", "S", "CA", "C", "stride_xs", "stride_ys"))
    first_exit = next(k for k, (_, ins) in enumerate(sass) if "EXIT" in ins)
    _report(f"forward {cfg} {args.dtype} uniform={consts['UNIFORM']}, up to the first exit", [i for _, i in sass[:first_exit + 1]],
            bs * bc // (32 * warps), args.ops)

    bs, bc, warps, row_reduce, *stages = (int(v) for v in args.bwd.split(","))
    cfg = (bs, bc, warps, bool(row_reduce), *stages)
    consts = dict(fn._bwd_consts(cfg, args.group_size), stride_xc=1, stride_gc=1, stride_dxc=1)
    sass = _sass(kernels.group_rational_bwd_kernel, consts, warps, args.dtype,
                 ("x_ptr", "go_ptr", "gx_ptr", "a_ptr", "b_ptr", "partial_ptr", "S", "CA", "C",
                  "stride_xs", "stride_gs", "stride_dxs"))
    # the tile loop: the one backward branch (target address below the branch's own)
    loops = [(int(m.group(1), 16), addr) for addr, ins in sass
             if (m := re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", ins)) and int(m.group(1), 16) < addr]
    start, end = max(loops, key=lambda t: t[1] - t[0])
    _report(f"backward {cfg} {args.dtype} uniform={consts['UNIFORM']}, tile loop", [i for a, i in sass if start <= a <= end],
            bs * bc // (32 * warps), args.ops)


if __name__ == "__main__":
    main()
