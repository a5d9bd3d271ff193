"""A transformer block's LayerNorm (norm2) and GR-KAN's first rational as one Triton kernel, forward
and backward (used by ``kat.layers.NormAct1``): y = F(layer_norm(x)) over the last axis, the row
statistics recomputed in backward, so neither LayerNorm's output nor the rational's input is kept.
Plain launchers for eager calls, custom ops with fake implementations for torch.compile, and an
``autograd.Function`` that picks between them."""
from __future__ import annotations

import torch

from .function import _padded, triton_supports
from .plan import _plannable
from .launch import _Launch, _cdiv, _device_sms, _launch_guard
from .reduction import _pow2, _Reduction, _Workspace

__all__ = ["LN_MAX_CHANNELS", "layernorm_rational", "layernorm_rational_backward", "layernorm_rational_supported",
           "LayerNormRationalFunction"]


def _ln_kernels():
    from . import layernorm_kernels  # lazy, like function._kernels: ``import kat`` never imports Triton
    return layernorm_kernels


_LN_PLANS: dict = {}
LN_MAX_CHANNELS = 4096  # one program holds whole rows


def layernorm_rational_supported(x: torch.Tensor, weight, bias, numerator, denominator) -> str | None:
    """None if ``layernorm_rational`` can run on these arguments, else why not."""
    reason = triton_supports(x, numerator, denominator)
    if reason is not None:
        return reason
    if weight is None or bias is None:
        return "the fused kernel needs a LayerNorm with weight and bias"
    c = x.shape[-1]
    if c > LN_MAX_CHANNELS or x.numel() == 0 or x.stride(-1) != 1 or not _plannable(x):
        return f"the fused kernel needs 1..{LN_MAX_CHANNELS} unit-stride channels in rows of one stride"
    if weight.shape != (c,) or bias.shape != (c,) or c % denominator.shape[0]:
        return "LayerNorm weight/bias or rational groups do not match the channels"
    return None


def layernorm_rational(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       numerator: torch.Tensor, denominator: torch.Tensor,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``group_rational(layer_norm(x, (C,), weight, bias, eps), numerator, denominator)`` over the
    last axis in one kernel, output in ``out_dtype`` (default x's). Inference only: records no
    autograd graph. Check ``layernorm_rational_supported`` first."""
    c = x.shape[-1]
    out_dtype = out_dtype or x.dtype
    key = (x.shape, x.stride(), x.dtype, x.device, out_dtype, weight.dtype, bias.dtype, numerator.shape,
           denominator.shape, float(eps))
    plan = _LN_PLANS.get(key)
    if plan is None:
        x2 = x.view(-1, c)
        block_c = _pow2(c)
        block_m = max(1, min(16, 4096 // block_c))
        # ptxas (sm_90): 115-181 registers, no spills, for C <= 1024 at 4 warps
        launch = _Launch(_ln_kernels().layernorm_rational_fwd_kernel, (_cdiv(x2.shape[0], block_m),),
                         {"BLOCK_M": block_m, "BLOCK_C": block_c}, max(4, block_c // 256), 6)
        plan = (launch, (x2.shape[0], c, c // denominator.shape[0], 0 if numerator.shape[0] == 1 else 6,
                         x2.stride(0), c, float(eps)))
        if len(_LN_PLANS) >= 1024:
            _LN_PLANS.clear()
        _LN_PLANS[key] = plan
    launch, ints = plan
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    with _launch_guard(x):
        launch(x, weight, bias, _padded(numerator, 6), _padded(denominator, 4), y, *ints)
    return y


_LN_BWD_PLANS: dict = {}


def layernorm_rational_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                eps: float, numerator: torch.Tensor, denominator: torch.Tensor):
    """(grad_x, grad_weight, grad_bias, grad_numerator, grad_denominator) of ``layernorm_rational``:
    one pass over (x, grad_y) writing grad_x and per-program partial sums, then fixed-order
    reductions (the coefficient reduction of the rational's backward; one torch sum for LayerNorm's
    two vectors)."""
    c = x.shape[-1]
    groups = denominator.shape[0]
    if not grad_y.is_contiguous():
        grad_y = grad_y.contiguous()
    key = (x.shape, x.stride(), x.dtype, grad_y.dtype, x.device, weight.dtype, bias.dtype, numerator.shape,
           denominator.shape, float(eps))
    plan = _LN_BWD_PLANS.get(key)
    if plan is None:
        x2 = x.view(-1, c)
        s = x2.shape[0]
        block_c = _pow2(c)
        # about 4 elements of a tile per thread: ptxas (sm_90) 103-167 registers, no spills, C <= 1024
        block_m = max(1, 1024 // block_c)
        warps = min(32, max(4, block_m * block_c // 128))
        sms = _device_sms(x.device)
        programs = max(1, min(_cdiv(s, block_m), sms * max(1, 16 // warps)))
        launch = _Launch(_ln_kernels().layernorm_rational_bwd_kernel, (programs,),
                         {"BLOCK_M": block_m, "BLOCK_C": block_c}, warps, 9)
        red = _Reduction(x.device, programs, groups, c // groups, numerator.shape[1], denominator.shape[1],
                         numerator.shape[0] == 1)
        ints = (s, c, c // groups, 0 if numerator.shape[0] == 1 else 6, x2.stride(0), c, c, float(eps), programs)
        ws = _Workspace(x.device, ((programs, c, 10), (programs, 2, c), red.scratch_shape))
        plan = (launch, ints, red, ws)
        if len(_LN_BWD_PLANS) >= 1024:
            _LN_BWD_PLANS.clear()
        _LN_BWD_PLANS[key] = plan
    launch, ints, red, ws = plan
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    with _launch_guard(x):
        partial, lnp, scratch = ws.get()  # partial sums kept per stream (see _Workspace)
        launch(x, grad_y, gx, weight, bias, _padded(numerator, 6), _padded(denominator, 4), partial, lnp, *ints)
        gnum, gden = red(partial, numerator, denominator, scratch=scratch)
    gwb = lnp.sum(0)
    gw, gb = gwb[0], gwb[1]
    if gw.dtype != weight.dtype:
        gw, gb = gw.to(weight.dtype), gb.to(bias.dtype)
    return gx, gw, gb, gnum, gden


# The same as custom ops, for torch.compile (fake impls give Inductor the output shapes/strides).
@torch.library.custom_op("kat::layernorm_rational_fwd", mutates_args=())
def layernorm_rational_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                           numerator: torch.Tensor, denominator: torch.Tensor,
                           out_dtype: torch.dtype) -> torch.Tensor:
    return layernorm_rational(x, weight, bias, eps, numerator, denominator, out_dtype)


@layernorm_rational_fwd.register_fake
def _(x, weight, bias, eps, numerator, denominator, out_dtype):
    return torch.empty(x.shape, dtype=out_dtype, device=x.device)


@torch.library.custom_op("kat::layernorm_rational_bwd", mutates_args=())
def layernorm_rational_bwd(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float, numerator: torch.Tensor, denominator: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gx, gw, gb, gnum, gden = layernorm_rational_backward(grad_y, x, weight, bias, eps, numerator, denominator)
    return gx, gw, gb.clone(), gnum.contiguous(), gden.contiguous()  # gw, gb: rows of one buffer


@layernorm_rational_bwd.register_fake
def _(grad_y, x, weight, bias, eps, numerator, denominator):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(weight),
            torch.empty_like(bias), torch.empty_like(numerator), torch.empty_like(denominator))


class LayerNormRationalFunction(torch.autograd.Function):
    """Autograd for ``layernorm_rational``: saves x and the parameters (the row statistics and z are
    recomputed in backward). Under torch.compile it records the custom ops above."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, numerator, denominator, out_dtype):
        ctx.save_for_backward(x, weight, bias, numerator, denominator)
        ctx.eps = eps
        if torch.compiler.is_compiling():
            return torch.ops.kat.layernorm_rational_fwd(x, weight, bias, eps, numerator, denominator, out_dtype)
        return layernorm_rational(x, weight, bias, eps, numerator, denominator, out_dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, bias, numerator, denominator = ctx.saved_tensors
        if torch.compiler.is_compiling():
            gx, gw, gb, gnum, gden = torch.ops.kat.layernorm_rational_bwd(grad_y, x, weight, bias, ctx.eps,
                                                                         numerator, denominator)
        else:
            gx, gw, gb, gnum, gden = layernorm_rational_backward(grad_y, x, weight, bias, ctx.eps, numerator,
                                                                 denominator)
        return gx, gw, gb, None, gnum, gden, None
