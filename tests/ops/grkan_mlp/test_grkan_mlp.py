"""kat.ops.grkan_mlp: the memory-saving act1 -> fc1 composite (rational_linear,
GRKAN(recompute_act1=True)) and the whole GR-KAN MLP as one autograd node (grkan_mlp, GRKAN's
eager fast path), each against the unfused computation: forward and every gradient, fp32 and under
autocast, both impls (Triton through the interpreter on a CPU-only machine); and what each variant
saves for backward compared with timm's Mlp."""
import copy

import pytest
import torch
from timm.layers import Mlp

import kat
import kat.layers
from kat.layers import GRKAN, NormAct1
from kat.ops.grkan_mlp import rational_linear

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
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            module(x)
    return sum(storages.values())


def test_saved_activations_against_timm_mlp(device):
    """Under bf16 autocast (fused-kernel path): the plain GR-KAN saves one bf16 (..., C) tensor more
    than timm's Mlp (act1's input; its output is what fc1 saves, as Mlp's fc1 saves its cast input);
    with recompute_act1 it saves no more activations than the Mlp."""
    c, tokens = 192, 8 * 197
    x = torch.randn(8, 197, c, device=device, requires_grad=True)
    mlp = _saved_bytes(Mlp(c, 4 * c).to(device), x)
    plain = _saved_bytes(GRKAN(c, 4 * c, impl="triton").to(device), x)
    fused = _saved_bytes(GRKAN(c, 4 * c, impl="triton", recompute_act1=True).to(device), x)
    extra = tokens * c * 2  # one bf16 (..., C) tensor
    assert mlp > 8 * extra  # Mlp keeps ~9 such tensors' worth (fc1 input, GELU input, fc2 input, weight casts)
    assert plain == mlp + extra
    assert fused <= mlp


def test_norm_act1_saves_no_more_than_timm_norm_and_mlp(device):
    """norm2 + MLP as in a transformer block, under bf16 autocast: LayerNorm + plain GR-KAN keeps one
    bf16 (..., C) tensor more than LayerNorm + timm's Mlp; with norm2 and act1 fused (NormAct1) it
    keeps no more than ViT's pair (the fused backward recomputes LayerNorm's output from x)."""
    c = 192
    x = torch.randn(8, 197, c, device=device, requires_grad=True)
    vit = _saved_bytes(torch.nn.Sequential(torch.nn.LayerNorm(c), Mlp(c, 4 * c)).to(device), x)
    plain = _saved_bytes(torch.nn.Sequential(torch.nn.LayerNorm(c), GRKAN(c, 4 * c, impl="triton")).to(device), x)
    grkan = GRKAN(c, 4 * c, impl="triton").to(device)
    grkan.apply_act1 = False
    fused = _saved_bytes(torch.nn.Sequential(NormAct1(torch.nn.LayerNorm(c).to(device), grkan.act1), grkan), x)
    assert plain == vit + 8 * 197 * c * 2
    assert fused <= vit


# ---------------------------------------------------------------------------------------------
# The whole GR-KAN MLP as one autograd node (GRKAN's eager fast path, kat.ops.grkan_mlp)

def _modules_only(mp):
    """GRKAN runs module by module: the one-node op declines every call (as it does under
    torch.compile or on the reference)."""
    mp.setattr(kat.layers, "grkan_mlp", lambda *args, **kwargs: None)


def _run_mlp(module, x0, fused, autocast, go_seed=1):
    """Output and the gradients of x and of every parameter, with the fast path on or off."""
    with pytest.MonkeyPatch.context() as mp:
        if not fused:
            _modules_only(mp)
        module.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = module(x)
        go = torch.randn(out.shape, generator=torch.Generator().manual_seed(go_seed)).to(out.device, out.dtype)
        out.backward(go)
    names = [n for n, p in module.named_parameters() if p.grad is not None]
    return out, type(out.grad_fn).__name__, [x.grad] + [p.grad for p in module.parameters() if p.grad is not None], names


def _perturbed_grkan(device, **kw):
    torch.manual_seed(0)
    m = GRKAN(48, 96, act_init="gelu", impl="triton", **kw).to(device)
    with torch.no_grad():  # move every parameter off its init so that each gradient is exercised
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("variant", ["plain", "no_bias", "per_group_numerator", "recompute_act1"])
def test_one_node_mlp_matches_module_by_module(variant, autocast, device):
    """GRKAN's fast path (one autograd node for act1, fc1, act2, fc2) against the same module run
    module by module: output, input gradient and every parameter's
    gradient, fp32 and under bf16 autocast."""
    kw = {"no_bias": dict(bias=False), "per_group_numerator": dict(shared_numerator=False),
          "recompute_act1": dict(recompute_act1=True)}.get(variant, {})
    m = _perturbed_grkan(device, **kw)
    x0 = torch.randn(4, 7, 48, device=device)
    out_f, node_f, grads_f, names_f = _run_mlp(m, x0, True, autocast)
    out_u, node_u, grads_u, names_u = _run_mlp(m, x0, False, autocast)
    assert node_f == "GRKANFunctionBackward" and node_u != node_f  # the fast path ran, then did not
    assert names_f == names_u and len(names_f) == (6 if variant == "no_bias" else 8)
    assert out_f.dtype == out_u.dtype == (torch.bfloat16 if autocast else torch.float32)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_f.float(), out_u.float(), **tol)
    for name, f, u in zip(["x"] + names_f, grads_f, grads_u):
        assert f.dtype == u.dtype and f.shape == u.shape, name
        scale = u.abs().max().item() or 1.0
        assert (f.float() - u.float()).abs().max().item() <= (2e-2 if autocast else 1e-5) * scale, name


def test_one_node_mlp_after_fused_norm_act1(device):
    """With act1 applied by norm2 (NormAct1) the node covers fc1, act2, fc2: same results as the
    modules, and act1's coefficients still get their gradients (through norm2's kernel)."""
    m = _perturbed_grkan(device)
    m.apply_act1 = False
    block = torch.nn.Sequential(NormAct1(torch.nn.LayerNorm(48).to(device), m.act1), m)
    x0 = torch.randn(3, 5, 48, device=device)
    (out_f, node_f, grads_f, names_f), (out_u, node_u, grads_u, names_u) = (
        _run_mlp(block, x0, on, False) for on in (True, False))
    assert node_f == "GRKANFunctionBackward" and node_u != node_f
    assert names_f == names_u and "1.act1.weight_denominator" in names_f
    torch.testing.assert_close(out_f, out_u, rtol=1e-5, atol=1e-5)
    for name, f, u in zip(["x"] + names_f, grads_f, grads_u):
        torch.testing.assert_close(f, u, rtol=1e-5, atol=1e-5 * (u.abs().max().item() or 1.0), msg=name)


def test_one_node_mlp_inference_frozen_and_fallbacks(device):
    """No grad: the plans run without a node and give the modules' output. Frozen coefficients: no
    gradient for them, the others as before. Dropout while training, a norm inside the MLP, a
    non-contiguous input and the PyTorch reference all take the module-by-module path."""
    m = _perturbed_grkan(device)
    x = torch.randn(2, 3, 48, device=device)
    with torch.no_grad():
        with pytest.MonkeyPatch.context() as mp:
            _modules_only(mp)
            want = m(x)
        got = m(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    m.act1.requires_grad_(False)
    m.zero_grad(set_to_none=True)
    out = m(x.clone().requires_grad_())
    assert type(out.grad_fn).__name__ == "GRKANFunctionBackward"
    out.sum().backward()
    assert m.act1.weight_numerator.grad is None and m.act2.weight_numerator.grad is not None
    assert m.fc1.weight.grad is not None
    dropped = GRKAN(48, 96, drop=0.1, impl="triton").to(device).train()
    assert type(dropped(x.requires_grad_()).grad_fn).__name__ != "GRKANFunctionBackward"
    assert type(dropped.eval()(x).grad_fn).__name__ == "GRKANFunctionBackward"  # no dropout in eval
    normed = GRKAN(48, 96, norm_layer=torch.nn.LayerNorm, impl="triton").to(device)
    assert type(normed(x).grad_fn).__name__ != "GRKANFunctionBackward"
    strided = torch.randn(3, 2, 48, device=device).transpose(0, 1).requires_grad_()
    assert type(m(strided).grad_fn).__name__ != "GRKANFunctionBackward"
    torch.testing.assert_close(m(strided), m(strided.contiguous()), rtol=1e-6, atol=1e-6)
    reference = GRKAN(48, 96, impl="torch").to(device)
    assert type(reference(x).grad_fn).__name__ != "GRKANFunctionBackward"


def test_one_node_mlp_in_a_kat_model(device):
    """A whole (small) KAT model trains through the one-node MLPs: loss and every gradient equal to
    the module-by-module model, fp32."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("kat_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
                              num_heads=2, num_classes=10, rational_impl="triton").to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    nodes = []
    for block in model.blocks:
        block.mlp.register_forward_hook(lambda mod, args, out: nodes.append(type(out.grad_fn).__name__))
    results = []
    for on in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if not on:
                _modules_only(mp)
            model.zero_grad(set_to_none=True)
            loss = model(x).square().mean()
            loss.backward()
        results.append((loss.detach(), [(n, p.grad.clone()) for n, p in model.named_parameters()]))
    (loss_f, grads_f), (loss_u, grads_u) = results
    assert nodes[:2] == ["GRKANFunctionBackward"] * 2 and "GRKANFunctionBackward" not in nodes[2:]
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-6, atol=0)
    assert len(grads_f) == len(grads_u) == len(list(model.parameters()))
    for (n, f), (_, u) in zip(grads_f, grads_u):
        torch.testing.assert_close(f, u, rtol=1e-5, atol=1e-6 * (u.abs().max().item() or 1.0), msg=n)
