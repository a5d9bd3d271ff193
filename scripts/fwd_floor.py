#!/usr/bin/env python3
"""Where the group-rational forward's time goes at one shape, on a GPU (a diagnostic for #2).

For each forward tile config that applies (configs.GPU_FWD_CONFIGS, as the tuner offers them):

  copy          a 2-D tile copy with the config's tiling, programs launched rows first (load,
                convert to fp32, convert back, store): the floor of that tiling
  math          the rational's arithmetic on the tile without the tile-wide overflow test (wrong
                for |x| > ~4e7, diagnostic only), rows first
  rows / cols   the real forward kernel with its programs launched rows first (the old order) and
                column blocks first (``KAT_COLS_FIRST``, the default)
  torch         ``y.copy_(x)`` (the same-size copy; one number, not per config)

"warm" times are Triton's ``do_bench_cudagraph`` (calls captured in one CUDA graph, median of
replays, like the tuner: x stays partly in L2 from call to call); "cold" times replay a graph of one
call through ``do_bench``, which clears L2 before each call (like ``kat-bench op --cuda-graphs``).
Fractions are of bytes moved (read x + write y) over the bandwidth of a 2 GiB fp32 copy timed by
``do_bench`` in the same run (what ``kat-bench op`` uses).

    PYTHONPATH=src python scripts/fwd_floor.py [--channels 768] [--dtype bf16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench, do_bench_cudagraph

from kat.ops.group_rational import function as F
from kat.ops.group_rational.kernels import _block_coefficients, _pq, _rcp_q


@triton.jit
def _tile_copy_kernel(x_ptr, y_ptr, S, CA, stride_xs, stride_ys,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    s = (tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    ca = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (s < S)[:, None] & (ca < CA)[None, :]
    x = tl.load(x_ptr + s[:, None] * stride_xs + ca[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + s[:, None] * stride_ys + ca[None, :], x.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _math_only_kernel(x_ptr, y_ptr, a_ptr, b_ptr, S, CA, C, GROUP_SIZE, a_group_stride, stride_xs, stride_ys,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, UNIFORM: tl.constexpr):
    pid_c = tl.program_id(1)
    ca = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = ca < CA
    a0, a1, a2, a3, a4, a5, b1, b2, b3, b4 = _block_coefficients(
        a_ptr, b_ptr, pid_c, ca, mask_c, C, GROUP_SIZE, a_group_stride, BLOCK_C, UNIFORM)
    b1, b2, b3, b4 = tl.abs(b1), tl.abs(b2), tl.abs(b3), tl.abs(b4)
    s = (tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    mask = (s < S)[:, None] & mask_c[None, :]
    x = tl.load(x_ptr + s[:, None] * stride_xs + ca[None, :], mask=mask, other=0.0).to(tl.float32)
    p, q = _pq(x, tl.abs(x), a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
    tl.store(y_ptr + s[:, None] * stride_ys + ca[None, :], (p * _rcp_q(q)).to(y_ptr.dtype.element_ty), mask=mask)


def _time(fn) -> float:
    return do_bench_cudagraph(fn, rep=20, return_mode="median")


def _time_cold(fn) -> float:
    """One call captured in a CUDA graph, replayed by ``do_bench`` (L2 cleared before each)."""
    fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay, warmup=25, rep=200, return_mode="median")


def _reference_copy_gb_s() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy (as kat-bench op)."""
    src = torch.empty(2 ** 29, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=768)
    p.add_argument("--rows", type=int, default=128 * 197)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    s, c, groups = args.rows, args.channels, args.groups
    gs = c // groups
    torch.manual_seed(0)
    x = torch.randn(s, c, device="cuda", dtype=dtype)
    y = torch.empty_like(x)
    a = torch.randn(1, 6, device="cuda") * 0.3
    b = torch.randn(groups, 4, device="cuda") * 0.3

    ref_bw = _reference_copy_gb_s()
    moved = 2 * x.numel() * x.element_size()

    def frac(ms):
        return moved / (ms * 1e-3) / 1e9 / ref_bw

    torch_ms, torch_cold = _time(lambda: y.copy_(x)), _time_cold(lambda: y.copy_(x))
    print(f"reference copy {ref_bw:.0f} GB/s; x {tuple(x.shape)} {args.dtype}; torch copy of x warm "
          f"{torch_ms * 1e3:.1f} us ({frac(torch_ms):.0%}), cold {torch_cold * 1e3:.1f} us ({frac(torch_cold):.0%})")
    print("config                     uniform   copy        math        rows warm   cols warm   rows cold   cols cold")
    rows = []
    default_order = F._COLS_FIRST_ON
    for cfg in F._fwd_candidates(gs):
        bs, bc, warps, select = cfg
        grid = (triton.cdiv(s, bs), triton.cdiv(c, bc))
        uniform = F._uniform(bc, gs)

        def kat(order):
            F._COLS_FIRST_ON = order
            return lambda: F._launch_fwd(x, y, a, b, 0, c, groups, cfg)

        try:
            row = {"cfg": list(cfg), "uniform": uniform}
            row["copy_ms"] = _time(lambda: _tile_copy_kernel[grid](x, y, s, c, x.stride(0), y.stride(0), BLOCK_S=bs,
                                                                   BLOCK_C=bc, num_warps=warps))
            row["math_ms"] = _time(lambda: _math_only_kernel[grid](x, y, a, b, s, c, c, gs, 0, x.stride(0),
                                                                   y.stride(0), BLOCK_S=bs, BLOCK_C=bc,
                                                                   UNIFORM=uniform, num_warps=warps))
            for order, name in ((False, "rows"), (True, "cols")):
                row[f"{name}_warm_ms"] = _time(kat(order))
                row[f"{name}_cold_ms"] = _time_cold(kat(order))
        except Exception as exc:  # a config this GPU cannot build
            print(f"{cfg}: {type(exc).__name__}: {exc}"[:200])
            continue
        finally:
            F._COLS_FIRST_ON = default_order
        rows.append(row)
        cells = "  ".join(f"{row[k] * 1e3:5.1f} ({frac(row[k]):4.0%})" for k in
                          ("copy_ms", "math_ms", "rows_warm_ms", "cols_warm_ms", "rows_cold_ms", "cols_cold_ms"))
        print(f"{str(cfg):26s} {int(uniform)}  {cells}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ref_copy_gb_s": ref_bw, "torch_copy_ms": torch_ms, "torch_copy_cold_ms": torch_cold,
                       "shape": [s, c], "dtype": args.dtype, "groups": groups, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
