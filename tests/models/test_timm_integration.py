"""What timm's tools do with a model, on KAT: meta-device builds, torch.fx tracing and fx feature
extraction, pretrained loading with another head or input channels (timm's two network tests,
replayed from a local file)."""
import pytest
import timm
import torch
import torch.fx

import kat

NAMES = [f"kat_{s}{v}_patch16_224" for s in ("tiny", "small", "base") for v in ("", "_swish", "_gelu")]


@pytest.mark.parametrize("name", NAMES)
def test_meta_device_build(name):
    for how in ("argument", "context"):
        if how == "argument":
            model = timm.create_model(name, device="meta")
        else:
            with torch.device("meta"):
                model = timm.create_model(name)
        assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
        out = model.eval()(torch.empty(2, 3, 224, 224, device="meta"))
        assert out.shape == (2, 1000) and out.is_meta


def test_meta_model_materialised_and_loaded():
    ref = timm.create_model("kat_tiny_patch16_224").eval()
    with torch.device("meta"):
        model = timm.create_model("kat_tiny_patch16_224")
    model.to_empty(device="cpu")
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref(x))


def _models():
    torch.manual_seed(0)
    model = timm.create_model("kat_tiny_patch16_224", img_size=64).eval()
    return model, torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fuse_norm_act1"])
def test_fx_symbolic_trace_matches_eager(fused):
    torch.manual_seed(0)
    model = timm.create_model("kat_tiny_patch16_224", img_size=64, fuse_norm_act1=fused).eval()
    x = torch.randn(2, 3, 64, 64)
    graph = torch.fx.symbolic_trace(model)
    calls = {n.target.__name__ for n in graph.graph.nodes if n.op == "call_function" and hasattr(n.target, "__name__")}
    assert "_norm_act1" in calls if fused else "_checked_rational" in calls
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=1e-5, atol=1e-5)
    model.train()  # and gradients through the traced graph
    graph = torch.fx.symbolic_trace(model)
    graph(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fx_feature_extraction_matches_eager():
    model, x = _models()
    torch.manual_seed(0)  # the same weights as _models()
    fx_feats = timm.create_model("kat_tiny_patch16_224", img_size=64, features_only=True, feature_cls="fx",
                                 out_indices=(3, 7, 11)).eval()
    assert torch.equal(dict(fx_feats.named_parameters())["graph_module.blocks.7.mlp.fc1.weight"],
                       model.blocks[7].mlp.fc1.weight)
    extractor = timm.models.create_feature_extractor(model, return_nodes={"blocks.3": "b3", "blocks.11": "b11"})
    with torch.no_grad():
        _, inter = model.forward_intermediates(x, indices=[3, 7, 11], output_fmt="NLC")
        ours = fx_feats(x)
        picked = extractor(x)
    assert len(ours) == 3
    for a, b in zip(ours, inter):  # the blocks' outputs; forward_intermediates drops the class token
        torch.testing.assert_close(a[:, 1:], b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked["b3"][:, 1:], inter[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked["b11"][:, 1:], inter[2], rtol=1e-5, atol=1e-5)


def test_timm_fx_tracer_calls_each_mlp_whole():
    """timm's fx tools (feature extraction, its fx tests) trace a GRKAN as one call, so the traced
    model runs the MLP exactly as eager does: on a GPU eager takes the fused kernels, and a
    module-by-module graph would differ from it in the last bits (timm's fx test compares with ==)."""
    model, x = _models()
    extractor = timm.models.create_feature_extractor(model, return_nodes={"blocks.11": "out"})
    called = {n.target for n in extractor.graph.nodes if n.op == "call_module"}
    assert "blocks.0.mlp" in called and not any(t.startswith("blocks.0.mlp.") for t in called)
    seen = []
    model.blocks[11].register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        traced = extractor(x)["out"]
        model(x)
    assert torch.equal(traced, seen[0])


def test_pretrained_from_a_file_with_another_head_and_channels(tmp_path):
    """timm's test_model_load_pretrained / test_model_features_pretrained, on a local checkpoint."""
    src = timm.create_model("kat_tiny_patch16_224")
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    overlay = dict(file=str(path))
    one = timm.create_model("kat_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                            in_chans=1, num_classes=5)
    assert one.patch_embed.proj.weight.shape[1] == 1 and one.head.out_features == 5
    torch.testing.assert_close(one.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(one.blocks[5].mlp.act2.weight_denominator, src.blocks[5].mlp.act2.weight_denominator)
    bare = timm.create_model("kat_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                             in_chans=1, num_classes=0)
    assert bare.eval()(torch.randn(1, 1, 224, 224)).shape == (1, 192)
    feats = timm.create_model("kat_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                              features_only=True)
    torch.testing.assert_close(feats.model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        assert [f.shape for f in feats.eval()(torch.randn(1, 3, 224, 224))] == [(1, 192, 14, 14)] * 3
