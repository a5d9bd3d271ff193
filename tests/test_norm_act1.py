"""LayerNorm + act1 fused for inference (kat.layers.NormAct1, the layernorm_rational kernel) against
the unfused computation, through the Triton interpreter on the CPU."""
import pytest
import timm
import torch

import kat  # noqa: F401  (registers the models)
from kat.layers import GRKAN, NormAct1
from kat.ops.group_rational import group_rational
from kat.ops.group_rational.layernorm import layernorm_rational, layernorm_rational_supported
from tests.helpers import rel_err


def _unfused(x, w, b, eps, num, den, out_dtype):
    z = torch.nn.functional.layer_norm(x.double(), (x.shape[-1],), w.double(), b.double(), eps)
    return group_rational(z, num.double(), den.double(), impl="torch").to(out_dtype)


@pytest.mark.parametrize("c,groups,shared", [(192, 8, True), (200, 8, False), (64, 1, True)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_layernorm_rational_kernel_matches_layer_norm_then_rational(c, groups, shared, out_dtype, device):
    torch.manual_seed(c)
    x = torch.randn(5, 13, c + 16, device=device)[..., 3:3 + c] * 3 + 1  # rows of one stride, offset
    w, b = torch.randn(c, device=device), torch.randn(c, device=device) * 0.5
    num = torch.randn(1 if shared else groups, 6, device=device) * 0.4
    den = torch.randn(groups, 4, device=device) * 0.4
    assert layernorm_rational_supported(x, w, b, num, den) is None
    y = layernorm_rational(x, w, b, 1e-6, num, den, out_dtype)
    want = _unfused(x, w, b, 1e-6, num, den, torch.float64)
    assert y.dtype == out_dtype and y.shape == x.shape
    assert rel_err(y.double(), want) <= (1e-5 if out_dtype == torch.float32 else 8e-3)
    y2 = layernorm_rational(x, w, b, 1e-6, num, den, out_dtype)  # cached plan
    assert torch.equal(y, y2)


@pytest.mark.parametrize("c,groups,shared", [(192, 8, True), (200, 8, False), (64, 1, True)])
@pytest.mark.parametrize("gy_dtype", [torch.float32, torch.bfloat16])
def test_layernorm_rational_backward_matches_float64_autograd(c, groups, shared, gy_dtype, device):
    from kat.ops.group_rational.layernorm import LayerNormRationalFunction
    torch.manual_seed(c + 1)
    x = (torch.randn(5, 13, c, device=device) * 2 + 0.5).requires_grad_()
    w = (torch.randn(c, device=device) * 0.5 + 1).requires_grad_()
    b = (torch.randn(c, device=device) * 0.3).requires_grad_()
    num = (torch.randn(1 if shared else groups, 6, device=device) * 0.4).requires_grad_()
    den = (torch.randn(groups, 4, device=device) * 0.4).requires_grad_()
    y = LayerNormRationalFunction.apply(x, w, b, 1e-5, num, den, gy_dtype)
    gy = torch.randn(x.shape, device=device).to(gy_dtype)
    got = torch.autograd.grad(y, (x, w, b, num, den), gy)
    ref_in = [t.detach().double().requires_grad_() for t in (x, w, b, num, den)]
    z = torch.nn.functional.layer_norm(ref_in[0], (c,), ref_in[1], ref_in[2], 1e-5)
    want = torch.autograd.grad(group_rational(z, ref_in[3], ref_in[4], impl="torch"), ref_in, gy.double())
    for name, g, ww, orig in zip("x w b num den".split(), got, want, (x, w, b, num, den)):
        assert g.dtype == orig.dtype and g.shape == orig.shape, name
        assert rel_err(g.double(), ww) <= 2e-5, name
    again = torch.autograd.grad(LayerNormRationalFunction.apply(x, w, b, 1e-5, num, den, gy_dtype),
                                (x, w, b, num, den), gy)
    assert all(torch.equal(p, q) for p, q in zip(got, again))  # deterministic


def test_layernorm_rational_refuses_what_it_cannot_do(device):
    x = torch.randn(4, 8, device=device)
    w, b, num, den = torch.ones(8, device=device), torch.zeros(8, device=device), torch.ones(1, 6), torch.ones(2, 4)
    assert "unit-stride" in layernorm_rational_supported(x.t().contiguous().t(), w, b, num.to(device), den.to(device))
    assert "weight and bias" in layernorm_rational_supported(x, None, b, num.to(device), den.to(device))


def _pair(**extra):
    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10,
              rational_impl="triton", **extra)
    torch.manual_seed(0)
    plain = timm.create_model("kat_tiny_patch16_224", **kw)
    fused = timm.create_model("kat_tiny_patch16_224", fuse_norm_act1=True, **kw)
    fused.load_state_dict(plain.state_dict())  # same keys: the fused model loads plain checkpoints
    return plain, fused


def test_fused_model_same_keys_training_and_inference(device):
    from kat.ops.group_rational import layernorm as fn
    fn._LN_BWD_PLANS.clear()
    plain, fused = _pair()
    plain, fused = plain.to(device), fused.to(device)
    assert set(plain.state_dict()) == set(fused.state_dict())
    assert isinstance(fused.blocks[0].norm2, NormAct1) and fused.blocks[0].mlp.act1_in_norm
    x = torch.randn(3, 3, 32, 32, device=device)
    # training: the fused forward and backward kernels; the same gradients up to fp32 rounding
    for m in (plain, fused):
        m.train()
        m.zero_grad()
        m(x).square().mean().backward()
    for (n, p), (_, q) in zip(plain.named_parameters(), fused.named_parameters()):
        assert rel_err(q.grad, p.grad) <= 1e-4, n
    # inference: the fused kernel (fp32 here), equal up to rounding
    assert len(fn._LN_BWD_PLANS) == 1  # training went through the fused backward
    fn._LN_PLANS.clear()
    plain.eval(), fused.eval()
    with torch.no_grad():
        assert rel_err(fused(x), plain(x)) <= 1e-5
    assert len(fn._LN_PLANS) == 1  # both blocks' norm2 ran the fused kernel (same shapes: one plan)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        a, b = fused(x), plain(x)
    assert rel_err(a.float(), b.float()) <= 3e-2  # bf16 activations throughout; one rounding differs


def test_fused_norm_act1_excludes_recompute_act1():
    g = GRKAN(16, 64, groups=4, recompute_act1=True)
    with pytest.raises(ValueError, match="recompute_act1"):
        NormAct1(torch.nn.LayerNorm(16), g)


def test_fused_model_under_torch_compile(device):
    """torch.compile(fullgraph=True) traces NormAct1 through the layernorm_rational custom ops
    (fake impls): same loss and gradients as eager, and inference."""
    torch._dynamo.reset()
    _, fused = _pair()
    fused = fused.to(device).train()
    x = torch.randn(2, 3, 32, 32, device=device)
    compiled = torch.compile(fused, fullgraph=True)
    loss_e = fused(x).square().mean()
    grads_e = torch.autograd.grad(loss_e, list(fused.parameters()))
    loss_c = compiled(x).square().mean()
    grads_c = torch.autograd.grad(loss_c, list(fused.parameters()))
    assert rel_err(loss_c, loss_e) <= 1e-5
    for gc, ge in zip(grads_c, grads_e):
        assert rel_err(gc, ge) <= 1e-4
    fused.eval()
    with torch.no_grad():
        # fp32, two blocks: on CUDA the compiled graph's attention and its generated kernels round
        # differently from eager's (an H200 gave 3.9e-5 here; on the CPU they agree to 1e-5)
        assert rel_err(compiled(x), fused(x)) <= (1e-4 if x.is_cuda else 1e-5)


def test_deepcopy_keeps_norm2_pointing_at_its_own_grkan():
    """EMA and other copies deep-copy the model: the copied norm2 must use the copied act1."""
    import copy
    _, fused = _pair()
    twin = copy.deepcopy(fused)
    for a, b in zip(fused.blocks, twin.blocks):
        assert b.norm2._grkan is b.mlp and b.norm2._grkan is not a.mlp and b.mlp.act1_in_norm
