"""Group-rational function in plain PyTorch: the source of truth for every other implementation.

F(x) = P(x) / Q(x) with
    P(x) = a_0 + a_1 x + ... + a_m x^m
    Q(x) = 1 + |b_1| |x| + |b_2| |x|^2 + ... + |b_n| |x|^n
applied per channel; channel ``c`` of ``C`` uses group ``c // (C // G)``. This is the formula the
official KAT CUDA/Triton kernels compute, so it is what the released checkpoints mean.

Derivative convention (the official kernels'): d|t|/dt = +1 at t = 0, for x and the denominator
coefficients; with torch.abs' subgradient 0, a rational initialised as the identity (all b = 0)
could never move its denominator. Any device and dtype, differentiable by autograd (gradcheck-able
in float64); bf16/fp16 inputs are evaluated in float32 and rounded once, as the fused kernels do.
Horner's rule keeps a few x-sized temporaries alive: the powers of x are never stacked.
"""
from __future__ import annotations

import torch

__all__ = ["group_rational_reference", "evaluate", "check_inputs", "compute_dtype", "abs_unit_at_zero",
           "DecomposedRational"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float32 for half types, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_inputs(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                 channel_dim: int) -> tuple[int, int]:
    """Validate shapes, dtypes and devices; return (C, G). Raises TypeError/ValueError naming values."""
    for name, t in (("x", x), ("numerator", numerator), ("denominator", denominator)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"group_rational: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"group_rational: {name} must have a floating dtype, got {t.dtype}")
    if x.dim() == 0:
        raise ValueError("group_rational: x must have at least one dimension (the channels)")
    if numerator.device != x.device or denominator.device != x.device:
        raise ValueError(
            f"group_rational: coefficients must be on x's device {x.device}, got numerator on "
            f"{numerator.device} and denominator on {denominator.device}")
    if denominator.dim() != 2 or denominator.shape[0] < 1 or denominator.shape[1] < 1:
        raise ValueError(
            f"group_rational: denominator must have shape (G, n) with G, n >= 1, got "
            f"{tuple(denominator.shape)}")
    groups = denominator.shape[0]
    if numerator.dim() != 2 or numerator.shape[0] not in (1, groups) or numerator.shape[1] < 1:
        raise ValueError(
            f"group_rational: numerator must have shape (1, m+1) or (G, m+1) with G={groups} "
            f"(from denominator {tuple(denominator.shape)}), got {tuple(numerator.shape)}")
    c = x.shape[channel_dim]
    if c % groups != 0:
        raise ValueError(
            f"group_rational: channels C={c} must be divisible by groups G={groups} "
            f"(x shape {tuple(x.shape)}, channel dim {channel_dim})")
    return c, groups


def abs_unit_at_zero(t: torch.Tensor) -> torch.Tensor:
    """|t| whose autograd derivative is sign(t) with sign(0) = +1 (see the module docstring)."""
    return torch.where(t < 0, -t, t)


def _per_channel(coef: torch.Tensor, channels: int, shape: list[int]) -> list[torch.Tensor]:
    """Expand (Gx, k) coefficients to k tensors broadcastable against x (channel axis marked -1 in shape)."""
    full = coef.repeat_interleave(channels // coef.shape[0], dim=0)  # (C, k)
    return [full[:, i].reshape(shape) for i in range(coef.shape[1])]


def group_rational_reference(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                             channel_dim: int = -1) -> torch.Tensor:
    """Evaluate F(x) with channels along ``channel_dim`` (-1: channels last, 1: (B, C, H, W))."""
    channel_dim = channel_dim % x.dim()
    check_inputs(x, numerator, denominator, channel_dim)
    return evaluate(x, numerator, denominator, channel_dim)


def evaluate(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
             channel_dim: int) -> torch.Tensor:
    """The formula on already-validated inputs (``channel_dim`` non-negative)."""
    channels = x.shape[channel_dim]
    xc, a, b, shape = _operands(x, numerator, denominator, channel_dim)
    y = _direct(xc, a, b)
    # Far from 0, P or Q can overflow (|x|^5 > 3.4e38 in fp32 for |x| > ~4e7) although P/Q is moderate;
    # there (finite x only) the scaled form, P and Q over x^n, is used. Eager calls decide once;
    # torch.export keeps that as one torch.cond (an ONNX If) on isnan(sum(y - y)), which onnxruntime
    # runs faster than isfinite masks; other traces (compile, TorchScript, CUDA graphs, meta) carry both.
    if getattr(torch.compiler, "is_exporting", lambda: False)() and not xc.is_meta:  # torch >= 2.5
        def fix(xc, y, flat):  # coefficients as one flat operand: closures alias, size-1 dims go symbolic
            c = [t.reshape(shape) for t in flat.split(channels)]
            return _mixed(xc, y, c[:len(a)], c[len(a):])
        flat = torch.cat([t.reshape(-1) for t in a + b])  # y * 1.0: a branch may not return y itself
        return torch.cond(torch.isnan((y - y).sum()), fix, lambda xc, y, flat: y * 1.0, (xc, y, flat)).to(x.dtype)
    tracing = xc.is_meta or torch.compiler.is_compiling() or torch.jit.is_tracing() or (
        xc.is_cuda and torch.cuda.is_current_stream_capturing())
    if not tracing and (bool(torch.isfinite(y).all())  # NaN/Inf x: the direct form's answer
                        or not bool((~torch.isfinite(y) & torch.isfinite(xc)).any())):
        return y.to(x.dtype)
    return _mixed(xc, y, a, b).to(x.dtype)


def _operands(x, numerator, denominator, channel_dim):
    """x in the compute dtype, and the coefficients as per-channel tensors broadcastable against it."""
    dt = compute_dtype(x.dtype)
    shape = [1] * x.dim()
    shape[channel_dim] = x.shape[channel_dim]
    a = _per_channel(numerator.to(dt), shape[channel_dim], shape)
    b = _per_channel(abs_unit_at_zero(denominator.to(dt)), shape[channel_dim], shape)
    return x.to(dt), a, b, shape


def _mixed(xc, y, a, b):
    """Direct form where finite, scaled form where it overflowed for a finite x; each sees only its own
    elements (others a stand-in), so neither's gradient injects NaN through torch.where."""
    scaled = ~torch.isfinite(y) & torch.isfinite(xc)  # a bool mask: no gradient flows through it
    y_direct = _direct(torch.where(scaled, torch.zeros_like(xc), xc), a, b)
    y_scaled = _scaled(torch.where(scaled, xc, torch.full_like(xc, 2.0)), a, b)
    return torch.where(scaled, y_scaled, y_direct)


def _direct(xc, a, b):
    """P(x) / Q(x) by Horner's rule (a, b: per-channel coefficient tensors, b already |b|)."""
    p = a[-1]
    for coef in reversed(a[:-1]):
        p = coef + xc * p
    ax = abs_unit_at_zero(xc) if torch.is_grad_enabled() else xc.abs()  # same values; one op, not three
    q = b[-1]
    for coef in reversed(b[:-1]):
        q = coef + ax * q
    q = 1 + ax * q
    return p / q


def _scaled(xc, a, b):
    """The same P/Q for |x| > 1 with P and Q divided by x^n (v = 1/x), which cannot overflow where the
    direct form does: P/x^n = sum_{k>=n} a_k x^(k-n) + sum_{k<n} a_k v^(n-k),
    Q/x^n = |b_n| + |v| (|b_(n-1)| + ... + |v| (|b_1| + |v|))."""
    n = len(b)
    v = 1.0 / xc
    av = abs_unit_at_zero(v)
    hi = torch.zeros_like(xc)
    for coef in reversed(a[n:]):  # a_m .. a_n: Horner in x
        hi = coef + xc * hi
    lo = torch.zeros_like(xc)
    for coef in a[:n]:  # a_0 .. a_(n-1): Horner in v, then one more factor v
        lo = coef + v * lo
    qs = torch.ones_like(xc)
    for coef in b:  # |b_1| .. |b_n|
        qs = coef + av * qs
    return (hi + v * lo) / qs


# ---------------------------------------------------------------------------------------------
# What a torch.compile-d call records where it would run on the reference (the CPU, and inputs the
# kernels do not take). Through the reference itself, autograd records every Horner step and keeps
# its intermediates for backward, which Inductor then stores and reloads. Here one autograd.Function computes the reference's
# forward and saves only x and the coefficients; its backward is written out (dL/dx and the
# coefficient sums, as the kernels compute them), so Inductor fuses each direction into a few loops.
# The backward differentiates the direct form, as the kernels do: where P or Q overflows (|x| beyond
# ~4e7 in fp32) its gradients are not finite, where eager calls differentiate the overflow-safe
# form.
def _horner(coefs: list, t: torch.Tensor):
    """sum_k coefs[k] t^k (coefs low to high, each broadcastable against t)."""
    acc = coefs[-1]
    for c in reversed(coefs[:-1]):
        acc = acc * t + c
    return acc


class DecomposedRational(torch.autograd.Function):
    """``apply(x, numerator, denominator, channel_dim)`` on validated inputs, channel_dim >= 0."""

    @staticmethod
    def forward(ctx, x, numerator, denominator, channel_dim):
        ctx.save_for_backward(x, numerator, denominator)
        ctx.channel_dim = channel_dim
        # What evaluate records when compiling, written out: reached from group_rational's compiled
        # branch only, where evaluate's eager/export decisions do not apply.
        xc, a, b, _ = _operands(x, numerator, denominator, channel_dim)
        return _mixed(xc, _direct(xc, a, b), a, b).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        cd, groups = ctx.channel_dim, denominator.shape[0]
        dt = compute_dtype(x.dtype)
        # channels last, split into (..., G, C/G); coefficients as (Gx, 1) columns against that
        xg = x.movedim(cd, -1).to(dt).unflatten(-1, (groups, -1))
        go = grad_out.movedim(cd, -1).to(dt).unflatten(-1, (groups, -1))
        a = [numerator[:, k].to(dt)[:, None] for k in range(numerator.shape[1])]
        b = [denominator[:, j].to(dt).abs()[:, None] for j in range(denominator.shape[1])]
        ax = xg.abs()
        p = _horner(a, xg)
        q = 1 + ax * _horner(b, ax)
        dp = _horner([k * a[k] for k in range(1, len(a))], xg) if len(a) > 1 else 0.0
        dq = _horner([j * b[j - 1] for j in range(1, len(b) + 1)], ax)
        dq = torch.where(xg < 0, -dq, dq)  # d|x|/dx = +1 at 0, the kernels' convention
        r = go / q
        f = p / q
        gx = (r * (dp - f * dq)).flatten(-2).movedim(-1, cd).to(x.dtype)
        dims = tuple(range(xg.dim() - 2)) + (xg.dim() - 1,)  # every axis but the group's
        terms, t = [r.sum(dims)], r
        for _ in range(1, len(a)):
            t = t * xg
            terms.append(t.sum(dims))
        ga = torch.stack(terms, -1)  # (G, m+1)
        if numerator.shape[0] == 1:
            ga = ga.sum(0, keepdim=True)
        terms, t = [], -r * f
        for _ in b:
            t = t * ax
            terms.append(t.sum(dims))
        sign_b = torch.where(denominator < 0, -1.0, 1.0).to(dt)  # +1 at 0, as for x
        gb = torch.stack(terms, -1) * sign_b
        return gx, ga.to(numerator.dtype), gb.to(denominator.dtype), None
