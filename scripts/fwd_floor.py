#!/usr/bin/env python3
"""Where the group-rational forward's time goes at one shape, on a GPU (a diagnostic for #2).

For each forward tile config that applies (configs.GPU_FWD_CONFIGS, as the tuner offers them), four
kernels over the same (S, C) matrix, each timed by Triton's ``do_bench_cudagraph`` (calls captured
in one CUDA graph, median of replays, like the tuner):

  copy      a 2-D tile copy with the config's tiling (load, convert to fp32, convert back, store):
            the floor of that tiling
  math      the rational's arithmetic on the tile (scalar or per-column coefficients as the kernel
            would use) without the tile-wide overflow test: wrong for |x| > ~4e7, diagnostic only
  kat       the real forward kernel at that config
  torch     ``y.copy_(x)`` (the same-size copy; one number, not per config)

Read: kat - math = the overflow test's cost; math - copy = the arithmetic's; copy vs torch = the
tiling's. Fractions are of bytes moved (read x + write y) over the reference copy bandwidth of a
2 GiB copy measured in the same run.

    PYTHONPATH=src python scripts/fwd_floor.py [--channels 768] [--dtype bf16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench_cudagraph

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


def _reference_copy_gb_s() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy."""
    src = torch.empty(2 ** 30, dtype=torch.int16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / (_time(lambda: dst.copy_(src)) * 1e-3) / 1e9


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

    torch_ms = _time(lambda: y.copy_(x))
    print(f"reference copy {ref_bw:.0f} GB/s; x {tuple(x.shape)} {args.dtype}; torch copy of x "
          f"{torch_ms * 1e3:.1f} us ({frac(torch_ms):.0%})")
    rows = []
    for cfg in F._fwd_candidates(gs):
        bs, bc, warps, select = cfg
        grid = F._fwd_grid(s, c, cfg)
        uniform = F._uniform(bc, gs)
        try:
            copy_ms = _time(lambda: _tile_copy_kernel[grid](x, y, s, c, x.stride(0), y.stride(0), BLOCK_S=bs,
                                                            BLOCK_C=bc, num_warps=warps))
            math_ms = _time(lambda: _math_only_kernel[grid](x, y, a, b, s, c, c, gs, 0, x.stride(0), y.stride(0),
                                                            BLOCK_S=bs, BLOCK_C=bc, UNIFORM=uniform,
                                                            num_warps=warps))
            kat_ms = _time(lambda: F._launch_fwd(x, y, a, b, 0, c, groups, cfg))
        except Exception as exc:  # a config this GPU cannot build
            print(f"{cfg}: {type(exc).__name__}: {exc}"[:200])
            continue
        row = {"cfg": list(cfg), "uniform": uniform, "copy_ms": copy_ms, "math_ms": math_ms, "kat_ms": kat_ms}
        rows.append(row)
        print(f"{str(cfg):26s} uniform={int(uniform)}  copy {copy_ms * 1e3:6.1f} us ({frac(copy_ms):4.0%})  "
              f"math {math_ms * 1e3:6.1f} us ({frac(math_ms):4.0%})  kat {kat_ms * 1e3:6.1f} us ({frac(kat_ms):4.0%})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ref_copy_gb_s": ref_bw, "torch_copy_ms": torch_ms, "shape": [s, c], "dtype": args.dtype,
                       "groups": groups, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
