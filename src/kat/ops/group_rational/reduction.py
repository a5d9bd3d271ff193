"""The deterministic reduction of the backward's per-program partial sums into coefficient
gradients (two small Triton launches), shared by the group-rational backward and the fused
LayerNorm + rational backward."""
from __future__ import annotations

import torch

from .launch import _Launch, _cdiv, _device_sms


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class _Reduction:
    """The two launches that turn the backward's partial sums, read as (rows, G, GS, NUM_ACC),
    into coefficient gradients: per (group, block of rows) sums into a (RS, G, 16) scratch, then one
    program that sums the blocks (and the groups, for a shared numerator). Grid and block sizes are
    fixed per shape, so the summation order, hence the result, is the same on every call."""

    __slots__ = ("rows", "groups", "gs", "num_m", "num_n", "shared", "rs", "per", "partials", "final")

    def __init__(self, device: torch.device, rows: int, groups: int, gs: int, num_m: int, num_n: int,
                 shared: bool, sms: int | None = None):
        from . import kernels  # lazy: ``import kat`` never imports Triton
        self.rows, self.groups, self.gs, self.num_m, self.num_n, self.shared = rows, groups, gs, num_m, num_n, shared
        block_j = min(64, _pow2(gs))
        block_r = max(1, 4096 // (block_j * 16))
        if sms is None:
            sms = _device_sms(device)
        # about two programs per SM, at most 64 row blocks (the final program reads them all)
        rs = max(1, min(64, _cdiv(rows, block_r), _cdiv(2 * sms, groups)))
        self.per = _cdiv(rows, rs)
        self.rs = _cdiv(rows, self.per)
        block_rs = _pow2(self.rs)
        self.partials = _Launch(kernels.coefficient_partials_kernel, (groups, self.rs),
                                {"BLOCK_R": block_r, "BLOCK_J": block_j}, 4, 2)
        self.final = _Launch(kernels.coefficient_grads_kernel, (1,),
                             {"SHARED": shared, "BLOCK_RS": block_rs,
                              "BLOCK_G": max(1, min(_pow2(groups), 4096 // (block_rs * 16)))}, 4, 3)

    def __call__(self, partial: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor):
        """(grad_numerator, grad_denominator) in the coefficients' dtypes, from ``partial``."""
        dev = partial.device
        scratch = torch.empty((self.rs, self.groups, 16), dtype=torch.float32, device=dev)
        gnum = torch.empty((1 if self.shared else self.groups, self.num_m), dtype=torch.float32, device=dev)
        gden = torch.empty((self.groups, self.num_n), dtype=torch.float32, device=dev)
        self.partials(partial, scratch, self.rows, self.groups, self.gs, self.per)
        self.final(scratch, gnum, gden, self.rs, self.groups, self.num_m, self.num_n)
        if numerator.dtype != gnum.dtype:
            gnum = gnum.to(numerator.dtype)
        if denominator.dtype != gden.dtype:
            gden = gden.to(denominator.dtype)
        return gnum, gden
