"""LayerNorm followed by a group rational, ``F(layer_norm(x))`` over the last axis, as one op.

A KAT block's norm2 and its GR-KAN's act1 (``kat.layers.NormAct1``). On the kernels: one read of x
and one write of y forward (instead of LayerNorm's fp32 write, a cast and the rational's pass),
and one backward kernel that recomputes the row statistics and writes grad_x plus per-program
partial sums for all five parameter gradients; nothing but x is saved. Built on the group-rational
op's launcher, coefficient reduction and kept buffers. Elsewhere (``impl="torch"``, CPU tensors
with ``impl="auto"``, shapes the kernel does not take) it is ``layer_norm``, a cast to
``out_dtype`` and ``group_rational``: exactly the unfused computation. The fused kernel applies the
rational to LayerNorm's fp32 output rather than its rounding, so the two differ by rounding.
"""
from __future__ import annotations

import torch

from ..group_rational import IMPLS, group_rational, triton_supports
from ..group_rational.launch import Launcher, cdiv, device_of, device_sms
from ..group_rational.plan import padded, row_view
from ..group_rational.reduction import Reduction, Workspace, pow2

__all__ = ["layernorm_rational", "MAX_CHANNELS"]

MAX_CHANNELS = 4096  # one program holds whole rows
_PLANS: dict = {}


def _fused_reason(x, weight, bias, numerator, denominator) -> str | None:
    """None where the fused kernels take these arguments, else why not."""
    reason = triton_supports(x, numerator, denominator)
    if reason is not None:
        return reason
    if weight is None or bias is None:
        return "the fused kernel needs a LayerNorm with weight and bias"
    c = x.shape[-1]
    if not 0 < c <= MAX_CHANNELS or x.numel() == 0 or x.stride(-1) != 1 or row_view(x, x.dim() - 1) is None:
        return f"the fused kernel needs 1..{MAX_CHANNELS} unit-stride channels in rows of one stride"
    if weight.shape != (c,) or bias.shape != (c,) or c % denominator.shape[0]:
        return "LayerNorm weight/bias or rational groups do not match the channels"
    return None


class _Plan:
    """The fused kernels' launches for one (x shape/strides/dtype, out dtype, parameters) key."""

    __slots__ = ("out_dtype", "fwd", "fwd_args", "bwd", "bwd_args", "red", "workspace")

    def __init__(self, x, numerator, denominator, eps: float, out_dtype: torch.dtype):
        from . import kernels  # lazy: ``import kat`` never imports Triton
        c, groups = x.shape[-1], denominator.shape[0]
        s, row_stride = row_view(x, x.dim() - 1)
        a_stride = 0 if numerator.shape[0] == 1 else 6
        block_c = pow2(c)
        self.out_dtype = out_dtype
        # ptxas (sm_90): 115-181 registers, no spills, for C <= 1024 at 4 warps
        block_m = max(1, min(16, 4096 // block_c))
        self.fwd = Launcher(kernels.layernorm_rational_fwd_kernel, (cdiv(s, block_m),),
                            {"BLOCK_M": block_m, "BLOCK_C": block_c}, max(4, block_c // 256), 6)
        self.fwd_args = (s, c, c // groups, a_stride, row_stride, c, float(eps))
        # backward: about 4 elements of a tile per thread (103-167 registers, no spills, C <= 1024)
        block_m = max(1, 1024 // block_c)
        warps = min(32, max(4, block_m * block_c // 128))
        programs = max(1, min(cdiv(s, block_m), device_sms(x.device) * max(1, 16 // warps)))
        self.bwd = Launcher(kernels.layernorm_rational_bwd_kernel, (programs,),
                            {"BLOCK_M": block_m, "BLOCK_C": block_c}, warps, 9)
        self.bwd_args = (s, c, c // groups, a_stride, row_stride, c, c, float(eps), programs)
        self.red = Reduction(x.device, programs, groups, c // groups, numerator.shape[1], denominator.shape[1],
                             numerator.shape[0] == 1)
        self.workspace = Workspace(x.device, ((programs, c, 10), (programs, 2, c), self.red.scratch_shape))

    def forward(self, x, weight, bias, numerator, denominator):
        y = torch.empty(x.shape, dtype=self.out_dtype, device=x.device)
        with device_of(x):
            self.fwd(x, weight, bias, padded(numerator, 6), padded(denominator, 4), y, *self.fwd_args)
        return y

    def backward(self, grad_y, x, weight, bias, numerator, denominator):
        if grad_y.dtype != self.out_dtype or not grad_y.is_contiguous():
            grad_y = grad_y.to(self.out_dtype, memory_format=torch.contiguous_format)
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        with device_of(x):
            partial, lnp, scratch = self.workspace.get()
            self.bwd(x, grad_y, gx, weight, bias, padded(numerator, 6), padded(denominator, 4), partial, lnp,
                     *self.bwd_args)
            gnum, gden = self.red(partial, numerator, denominator, scratch)
        gw, gb = lnp.sum(0)
        if gw.dtype != weight.dtype:
            gw, gb = gw.to(weight.dtype), gb.to(bias.dtype)
        return gx, gw, gb, gnum, gden


def _plan(x, weight, bias, eps, numerator, denominator, out_dtype) -> _Plan:
    key = (x.shape, x.stride(), x.dtype, x.device, out_dtype, weight.dtype, bias.dtype, numerator.shape,
           numerator.dtype, denominator.shape, denominator.dtype, float(eps))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 1024:
            _PLANS.clear()
        plan = _PLANS[key] = _Plan(x, numerator, denominator, eps, out_dtype)
    return plan


@torch.library.custom_op("kat::layernorm_rational_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, numerator: torch.Tensor,
            denominator: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return _plan(x, weight, bias, eps, numerator, denominator, out_dtype).forward(x, weight, bias, numerator,
                                                                                   denominator)


@_fwd_op.register_fake
def _(x, weight, bias, eps, numerator, denominator, out_dtype):
    return torch.empty(x.shape, dtype=out_dtype, device=x.device)


@torch.library.custom_op("kat::layernorm_rational_bwd", mutates_args=())
def _bwd_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
            numerator: torch.Tensor, denominator: torch.Tensor, out_dtype: torch.dtype
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    plan = _plan(x, weight, bias, eps, numerator, denominator, out_dtype)
    gx, gw, gb, gnum, gden = plan.backward(grad_y, x, weight, bias, numerator, denominator)
    return gx, gw.clone(), gb.clone(), gnum, gden  # gw, gb: rows of one buffer


@_bwd_op.register_fake
def _(grad_y, x, weight, bias, eps, numerator, denominator, out_dtype):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(weight),
            torch.empty_like(bias), torch.empty_like(numerator), torch.empty_like(denominator))


class LayerNormRationalFunction(torch.autograd.Function):
    """``apply(x, weight, bias, eps, numerator, denominator, out_dtype, plan)``; ``plan`` None under
    torch.compile (the custom ops then). Saves x and the parameters."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, numerator, denominator, out_dtype, plan):
        ctx.save_for_backward(x, weight, bias, numerator, denominator)
        ctx.eps, ctx.out_dtype, ctx.plan = eps, out_dtype, plan
        if plan is None:
            return torch.ops.kat.layernorm_rational_fwd(x, weight, bias, eps, numerator, denominator, out_dtype)
        return plan.forward(x, weight, bias, numerator, denominator)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, bias, numerator, denominator = ctx.saved_tensors
        if ctx.plan is None:
            grads = torch.ops.kat.layernorm_rational_bwd(grad_y, x, weight, bias, ctx.eps, numerator, denominator,
                                                         ctx.out_dtype)
        else:
            grads = ctx.plan.backward(grad_y, x, weight, bias, numerator, denominator)
        gx, gw, gb, gnum, gden = grads
        return gx, gw, gb, None, gnum, gden, None, None


def layernorm_rational(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                       numerator: torch.Tensor, denominator: torch.Tensor, *,
                       out_dtype: torch.dtype | None = None, impl: str = "auto") -> torch.Tensor:
    """``group_rational(layer_norm(x, (C,), weight, bias, eps).to(out_dtype), numerator, denominator,
    impl=impl)`` over the last axis; ``out_dtype`` defaults to x's dtype. The fused kernels run
    where the rational would run on Triton (``impl="auto"`` and CUDA tensors, or ``impl="triton"``)
    and they take the arguments (C <= 4096, unit-stride channels, a LayerNorm with weight and bias)."""
    if impl not in IMPLS:
        raise ValueError(f"layernorm_rational: impl must be one of {IMPLS}, got {impl!r}")
    out_dtype = out_dtype or x.dtype
    if (x.is_cuda or impl == "triton") and impl != "torch" \
            and _fused_reason(x, weight, bias, numerator, denominator) is None:
        compiling = torch.compiler.is_compiling()
        plan = None if compiling else _plan(x, weight, bias, eps, numerator, denominator, out_dtype)
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad
                                        or numerator.requires_grad or denominator.requires_grad):
            return LayerNormRationalFunction.apply(x, weight, bias, eps, numerator, denominator, out_dtype, plan)
        if compiling:
            return torch.ops.kat.layernorm_rational_fwd(x, weight, bias, eps, numerator, denominator, out_dtype)
        return plan.forward(x, weight, bias, numerator, denominator)
    z = torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)
    if z.dtype != out_dtype:
        z = z.to(out_dtype)
    return group_rational(z, numerator, denominator, impl=impl)
