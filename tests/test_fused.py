"""The memory-saving act1 -> fc1 composite (kat.fused.rational_linear, GRKAN(recompute_act1=True))
against the unfused reference: forward and every gradient, fp32 and under autocast, both impls
(Triton through the interpreter on a CPU-only machine); and what each variant saves for backward
compared with timm's Mlp."""
import copy

import pytest
import torch
from timm.layers import Mlp

import kat
from kat.fused import rational_linear
from kat.layers import GRKAN

IMPLS = ["torch", "triton"]


def _inputs(device, c=48, h=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, c, generator=g).to(device)
    a = (torch.randn(1, 6, generator=g) * 0.3).to(device)
    b = (torch.randn(8, 4, generator=g) * 0.3).to(device)
    w = (torch.randn(h, c, generator=g) / c ** 0.5).to(device)
    bias = torch.randn(h, generator=g).to(device)
    go = torch.randn(3, 5, h, generator=g).to(device)
    return x, a, b, w, bias, go


def _grads(fn, tensors, go):
    ts = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*ts)
    return (out, *torch.autograd.grad(out, ts, go))


@pytest.mark.parametrize("impl", IMPLS)
def test_rational_linear_matches_unfused_fp32(impl, device):
    x, a, b, w, bias, go = _inputs(device)
    fused = _grads(lambda *t: rational_linear(*t, impl=impl), (x, a, b, w, bias), go)
    plain = _grads(lambda x, a, b, w, bias: torch.nn.functional.linear(kat.group_rational(x, a, b, impl=impl), w, bias),
                   (x, a, b, w, bias), go)
    for f, p in zip(fused, plain):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_grkan_recompute_matches_unfused_under_autocast(impl, device):
    torch.manual_seed(0)
    plain = GRKAN(48, 96, act_init="gelu", impl=impl).to(device)
    with torch.no_grad():
        plain.act1.weight_numerator.add_(0.1 * torch.randn_like(plain.act1.weight_numerator))
        plain.act1.weight_denominator.add_(0.2 * torch.randn_like(plain.act1.weight_denominator))
    fused = copy.deepcopy(plain)
    fused.recompute_act1 = True
    x = torch.randn(4, 7, 48, device=device)
    results = []
    for mod in (plain, fused):
        xi = x.clone().requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = mod(xi)
        out.float().square().sum().backward()
        results.append((out, xi.grad, *[p.grad for p in mod.parameters()]))
    assert results[0][0].dtype == torch.bfloat16
    for f, p in zip(results[1], results[0]):
        torch.testing.assert_close(f, p, rtol=1e-2, atol=1e-3)


def test_grkan_recompute_without_grad_and_with_frozen_coefficients(device):
    layer = GRKAN(16, 32, recompute_act1=True).to(device)
    x = torch.randn(2, 3, 16, device=device)
    with torch.no_grad():
        ref = GRKAN.forward(copy.deepcopy(layer).requires_grad_(False), x)
        assert torch.equal(layer(x), ref)
    layer.act1.requires_grad_(False)  # only some inputs need gradients
    layer(x.requires_grad_()).sum().backward()
    assert layer.act1.weight_numerator.grad is None and layer.fc1.weight.grad is not None and x.grad is not None


def _saved_bytes(module, x):
    """Bytes of the storages autograd keeps for backward, parameters excepted (they exist anyway)."""
    storages = {}
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module(x)
    return sum(storages.values())


def test_saved_activations_against_timm_mlp():
    """Under bf16 autocast (fused-kernel path): the plain GR-KAN saves one bf16 (..., C) tensor more
    than timm's Mlp (act1's input; its output is what fc1 saves, as Mlp's fc1 saves its cast input);
    with recompute_act1 it saves no more activations than the Mlp."""
    c, tokens = 192, 8 * 197
    x = torch.randn(8, 197, c, requires_grad=True)
    mlp = _saved_bytes(Mlp(c, 4 * c), x)
    plain = _saved_bytes(GRKAN(c, 4 * c, impl="triton"), x)
    fused = _saved_bytes(GRKAN(c, 4 * c, impl="triton", recompute_act1=True), x)
    extra = tokens * c * 2  # one bf16 (..., C) tensor
    assert mlp > 8 * extra  # Mlp keeps ~9 such tensors' worth (fc1 input, GELU input, fc2 input, weight casts)
    assert plain == mlp + extra
    assert fused <= mlp


def test_norm_act1_saves_no_more_than_timm_norm_and_mlp():
    """norm2 + MLP as in a transformer block, under bf16 autocast: LayerNorm + plain GR-KAN keeps one
    bf16 (..., C) tensor more than LayerNorm + timm's Mlp; with norm2 and act1 fused (NormAct1) it
    keeps no more than ViT's pair (the fused backward recomputes LayerNorm's output from x)."""
    from kat.layers import NormAct1
    c = 192
    x = torch.randn(8, 197, c, requires_grad=True)
    vit = _saved_bytes(torch.nn.Sequential(torch.nn.LayerNorm(c), Mlp(c, 4 * c)), x)
    plain = _saved_bytes(torch.nn.Sequential(torch.nn.LayerNorm(c), GRKAN(c, 4 * c, impl="triton")), x)
    grkan = GRKAN(c, 4 * c, impl="triton")
    fused = _saved_bytes(torch.nn.Sequential(NormAct1(torch.nn.LayerNorm(c), grkan), grkan), x)
    assert plain == vit + 8 * 197 * c * 2
    assert fused <= vit
