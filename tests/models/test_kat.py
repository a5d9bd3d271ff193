"""KAT models in timm: registration, parameter counts, official checkpoints, FlashKAT, from-ViT."""
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import kat
from kat.layers import set_rational_impl
from tests.helpers import rel_err

COUNTS = {"tiny": 5_718_328, "small": 22_051_576, "base": 86_568_568}
RATIONAL_COEFFS = 24 * (6 + 32)  # 12 blocks x 2 rationals x (1x6 numerator + 8x4 denominator)


def test_models_registered_on_import():
    names = set(timm.list_models("kat_*"))
    for size in COUNTS:
        assert {f"kat_{size}_patch16_224", f"kat_{size}_swish_patch16_224", f"kat_{size}_gelu_patch16_224"} <= names
    pretrained = set(timm.list_pretrained("kat_*"))
    assert {"kat_tiny_patch16_224.in1k", "kat_tiny_patch16_224.vitft", "kat_base_patch16_224.vitft"} <= pretrained
    cfg = timm.models.get_pretrained_cfg("kat_small_patch16_224.vitft")
    assert cfg.hf_hub_id == "adamdad/kat_small_patch16_224.vitft"
    assert cfg.url.endswith("3ae087a4c28e2993468eb377d5151350c52c80b2a70cc48ceec63d1328ba58e0.pth")
    assert cfg.crop_pct == 0.875 and cfg.interpolation == "bicubic" and cfg.license == "mit"
    assert cfg.paper_ids == "arXiv:2409.10594"


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_parameter_counts(size):
    with torch.device("meta"):  # no weights materialised: counts only
        model = timm.create_model(f"kat_{size}_patch16_224")
        vit = timm.create_model(f"vit_{size}_patch16_224")
    n = sum(p.numel() for p in model.parameters())
    assert n == COUNTS[size]
    assert n - sum(p.numel() for p in vit.parameters()) == RATIONAL_COEFFS


def test_create_on_cpu_and_forward():
    model = timm.create_model("kat_tiny_patch16_224").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert isinstance(model.blocks[0].mlp, kat.GRKAN)
    assert model.blocks[0].mlp.act2.init_name == "silu"
    assert timm.create_model("kat_tiny_gelu_patch16_224").blocks[0].mlp.act2.init_name == "gelu"


def _golden(golden_dir):
    ckpt = torch.load(golden_dir / "kat_tiny_swish.pth")
    inp = torch.load(golden_dir / "kat_tiny_swish_input.pt")["images"]
    out = torch.load(golden_dir / "kat_tiny_swish_official_out.pt")
    return ckpt, inp, out


def _check_golden(model, inp, out, device="cpu"):
    model.eval().to(device)
    with torch.no_grad():
        feats = model.forward_features(inp.to(device))
        logits = model.forward_head(feats)
    assert rel_err(feats, out["features"]) <= 1e-4
    assert rel_err(logits, out["logits"]) <= 1e-4
    return logits


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_golden_official_checkpoint(impl, golden_dir, device):
    ckpt, inp, out = _golden(golden_dir)
    assert ckpt["arch"] == "kat_tiny_swish_patch16_224"
    model = timm.create_model("kat_tiny_swish_patch16_224")
    assert model.load_state_dict(ckpt["state_dict"], strict=True)
    set_rational_impl(model, impl)
    _check_golden(model, inp, out, device)


@pytest.mark.parametrize("wrap", ["file-as-is", "bare", "model", "state_dict_ema", "module-prefix"])
def test_checkpoint_loading_paths(wrap, golden_dir, tmp_path):
    ckpt, inp, out = _golden(golden_dir)
    sd = ckpt["state_dict"]
    obj = {"file-as-is": ckpt, "bare": sd, "model": {"model": sd, "epoch": 3},
           "state_dict_ema": {"state_dict_ema": sd},
           "module-prefix": {"state_dict": {"module." + k: v for k, v in sd.items()}}}[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    # 1. pretrained=True with a file overlay (timm's hub-loading path, offline)
    m1 = timm.create_model("kat_tiny_swish_patch16_224", pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(path)))
    _check_golden(m1, inp, out)
    if wrap in ("file-as-is", "bare", "model", "module-prefix"):
        # 2. checkpoint_path= and 3. timm.models.load_checkpoint (timm unwraps these itself)
        _check_golden(timm.create_model("kat_tiny_swish_patch16_224", checkpoint_path=str(path)), inp, out)
        m3 = timm.create_model("kat_tiny_swish_patch16_224")
        timm.models.load_checkpoint(m3, str(path))
        _check_golden(m3, inp, out)
    else:
        m3 = timm.create_model("kat_tiny_swish_patch16_224")
        timm.models.load_checkpoint(m3, str(path), use_ema=True)
        _check_golden(m3, inp, out)


@pytest.mark.parametrize("numerator_rows", [1, 8])
def test_flashkat_checkpoint(numerator_rows, golden_dir):
    ckpt, inp, out = _golden(golden_dir)
    flash = {}
    for k, v in ckpt["state_dict"].items():
        if k.endswith("weight_numerator"):
            flash[k.replace("weight_numerator", "numerator_v")] = v.expand(numerator_rows, -1).clone()
        elif k.endswith("weight_denominator"):
            flash[k.replace("weight_denominator", "denominator_v")] = v.clone()
        else:
            flash[k] = v
    model = timm.create_model("kat_tiny_swish_patch16_224")
    model.load_state_dict(flash, strict=True)
    _check_golden(model, inp, out)


def test_wrong_variant_fails_with_a_clear_message(golden_dir, tmp_path):
    ckpt, _, _ = _golden(golden_dir)
    small = timm.create_model("kat_small_patch16_224")
    with pytest.raises(ValueError, match="embed_dim 192, but this KAT has embed_dim 384: wrong variant"):
        small.load_state_dict(ckpt["state_dict"])
    path = tmp_path / "tiny.pth"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="wrong variant"):
        timm.create_model("kat_small_patch16_224", checkpoint_path=str(path))
    vit_sd = timm.create_model("vit_tiny_patch16_224").state_dict()
    with pytest.raises(ValueError, match=r"looks like a plain ViT; convert it with kat.from_vit"):
        timm.create_model("kat_tiny_patch16_224").load_state_dict(vit_sd)


def _vit_and_batch(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224").eval(), torch.randn(4, 3, 224, 224)


def test_from_vit_preserves_the_function():
    """Measured on CPU: logits within 1.1e-2 relative of the ViT's (the GELU fit error is 3.4e-3)."""
    vit, x = _vit_and_batch()
    model = kat.from_vit(vit).eval()
    assert isinstance(model, kat.KAT)
    with torch.no_grad():
        err = rel_err(model(x), vit(x))
    assert err <= 2e-2
    b0 = model.blocks[0].mlp
    assert torch.equal(b0.fc1.weight, vit.blocks[0].mlp.fc1.weight)
    assert b0.act1.init_name == "identity" and b0.act2.init_name == "gelu"


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "npz"])
def test_from_vit_files(fmt, tmp_path):
    vit, x = _vit_and_batch(1)
    path = tmp_path / f"vit.{fmt}"
    if fmt == "pth":
        torch.save({"model": vit.state_dict()}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    else:
        _save_big_vision_npz(vit, path)
    model = kat.from_vit(path).eval()
    with torch.no_grad():
        assert rel_err(model(x), vit(x)) <= 2e-2


def _save_big_vision_npz(vit, path: Path):
    """Write a timm ViT in the AugReg .npz layout (what timm's npz loader reads)."""
    sd = {k: v.detach().numpy() for k, v in vit.state_dict().items()}
    d = vit.embed_dim
    h = vit.blocks[0].attn.num_heads
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(vit.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            out[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, h, d // h)
            out[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(h, d // h)
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = \
            sd[b + "attn.proj.weight"].reshape(d, h, d // h).transpose(1, 2, 0)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            out[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            out[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **out)


def test_features_only_and_intermediates():
    model = timm.create_model("kat_tiny_patch16_224", features_only=True, out_indices=(3, 7, 11)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(2, 192, 14, 14)] * 3
    full = timm.create_model("kat_tiny_patch16_224").eval()
    with torch.no_grad():
        final, inter = full.forward_intermediates(x, indices=[0, 11])
    assert final.shape == (2, 197, 192) and [tuple(t.shape) for t in inter] == [(2, 192, 14, 14)] * 2


def _qk_stats(wq: torch.Tensor, wk: torch.Tensor) -> torch.Tensor:
    """What a head's mimetic init promises: W_q^T W_k has a large positive diagonal (beta * I) over a
    small random rest (alpha * U), shared evenly by both factors."""
    qk = wq.t() @ wk
    diag = qk.diagonal()
    return torch.stack([diag.mean(), (qk - torch.diag(diag)).std(), wq.norm(), wk.norm()])


def _fresh_heads(dim, hd, count, alpha=0.7, beta=0.7, seed=0):
    """The construction from its definition: one fresh A = alpha*U + beta*I and one exact SVD per head."""
    g = torch.Generator().manual_seed(seed)
    bound = (3.0 / dim) ** 0.5
    for _ in range(count):
        a = (torch.rand(dim, dim, generator=g, dtype=torch.float64) * 2 - 1) * bound * alpha + beta * torch.eye(dim)
        u, s, vh = torch.linalg.svd(a)
        yield (u[:, :hd] * s[:hd].sqrt()).t(), s[:hd].sqrt()[:, None] * vh[:hd]


def test_mimetic_attention_init():
    """Every head and block: the statistics of the definition (one fresh draw and SVD per head), factors
    of equal singular values, distinct heads; the value/output pair reproduces alpha*U - beta*I."""
    d, heads, hd = 192, 3, 64
    model = timm.create_model("kat_tiny_patch16_224", attn_init="mimetic")
    stats, qs = [], []
    for block in model.blocks:
        w = block.attn.qkv.weight.detach().double()
        for h in range(heads):
            wq, wk = w[h * hd:(h + 1) * hd], w[d + h * hd:d + (h + 1) * hd]
            stats.append(_qk_stats(wq, wk))
            qs.append(wq)
            sq, sk = torch.linalg.svdvals(wq), torch.linalg.svdvals(wk)
            assert torch.allclose(sq, sk, rtol=1e-4, atol=1e-6)  # split evenly
        wv, wo = w[2 * d:], block.attn.proj.weight.detach().double()
        vo = wv @ wo + 0.4 * torch.eye(d)  # the alpha*U part, U ~ uniform(+-sqrt(3/d))
        bound = 0.4 * (3.0 / d) ** 0.5
        assert vo.abs().max() <= bound * (1 + 1e-4)
        assert vo.var().item() == pytest.approx(bound ** 2 / 3, rel=0.05)
    ours = torch.stack(stats).mean(0)
    ref = torch.stack([_qk_stats(q, k) for q, k in _fresh_heads(d, hd, 36)]).mean(0)
    assert torch.allclose(ours, ref, rtol=0.03), (ours, ref)
    assert ours[0] > 5 * ours[1]  # attention starts near the identity
    assert all(not torch.allclose(a, b) for i, a in enumerate(qs) for b in qs[i + 1:])
    default = timm.create_model("kat_tiny_patch16_224").blocks[0].attn.qkv.weight  # timm's ViT init
    assert default.std().item() == pytest.approx(0.02, rel=0.1)


def test_model_file_is_small_and_uses_public_timm_api():
    src = Path(kat.models.kat.__file__).read_text()
    assert src.count("\n") <= 500
    imports = re.findall(r"^\s*(?:from|import)\s+(timm[\w.]*)", src, re.M)
    assert imports and not [m for m in imports if any(part.startswith("_") for part in m.split("."))]


def test_weights_loaded_at_creation_skip_the_mimetic_svds(golden_dir, tmp_path, monkeypatch):
    """pretrained=True and from_vit replace every attention weight, so building them must not pay
    for the mimetic init's SVDs; a fresh model asking for it still gets it."""
    ckpt, inp, out = _golden(golden_dir)
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    calls = []
    real = kat.models.kat._ortho_like
    monkeypatch.setattr(kat.models.kat, "_ortho_like", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = timm.create_model("kat_tiny_swish_patch16_224", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
    _check_golden(m, inp, out)
    vit, _ = _vit_and_batch()
    kat.from_vit(vit)
    assert calls == []
    timm.create_model("kat_tiny_patch16_224", attn_init="mimetic")
    assert len(calls) == 2  # one per kind (query/key, value/output); heads and blocks permute them
