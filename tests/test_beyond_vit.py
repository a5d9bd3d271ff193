"""kanify on timm families, GroupRational2d vs the channels-last path, the char-LM example, ONNX and
torch.export, and the FLOPs report against the paper's deltas."""
import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

import kat
from kat.flops import flops_report
from kat.layers import GRKAN, GroupRational, GroupRational2d

ROOT = Path(__file__).resolve().parents[1]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# --- kanify --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit_small_patch16_224", "swin_tiny_patch4_window7_224"])
def test_kanify_preserves_logits(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    n_before = sum(p.numel() for p in model.parameters())
    converted, report = kat.kanify(copy.deepcopy(model))
    assert len(report) == 12 and report.added_parameters == 12 * 2 * (6 + 8 * 4)
    assert not any(type(m).__name__ == "Mlp" for m in converted.modules())
    assert sum(isinstance(m, GRKAN) for m in converted.modules()) == 12
    assert sum(p.numel() for p in converted.parameters()) == n_before + report.added_parameters
    assert report.replaced[0]["act_init"] == "gelu" and "GELU" in str(report)
    with torch.no_grad():
        out = converted.eval()(x)
    assert _rel(out, ref) < 2e-2
    # fc weights were copied, not re-initialised
    src = model.get_submodule(report.replaced[0]["name"])
    dst = converted.get_submodule(report.replaced[0]["name"])
    assert torch.equal(src.fc1.weight, dst.fc1.weight) and torch.equal(src.fc2.bias, dst.fc2.bias)


class _MyMLP(nn.Module):
    def __init__(self, d, h, act):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), act, nn.Linear(h, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_kanify_predicate_any_module_and_fitted_activation():
    torch.manual_seed(0)
    net = nn.Sequential(_MyMLP(16, 32, nn.SiLU()), _MyMLP(16, 32, nn.Softplus()))
    x = torch.randn(5, 7, 16)
    with torch.no_grad():
        ref = net(x)
    net, report = kat.kanify(net, predicate=lambda name, m: isinstance(m, _MyMLP))
    assert [r["act_init"] for r in report.replaced] == ["silu", "fitted to Softplus"]  # preset, then fitted on the fly
    with torch.no_grad():
        assert _rel(net(x), ref) < 1e-2


def test_kanify_errors():
    with pytest.raises(ValueError, match=r"kanify: no module matched"):
        kat.kanify(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match=r"kanify: 0 \(Linear\) has no nn.Linear 'fc1'"):
        kat.kanify(nn.Sequential(nn.Linear(4, 4)), predicate=lambda n, m: isinstance(m, nn.Linear))
    with pytest.raises(ValueError, match=r"kanify: 0: width 12 is not divisible by groups=8"):
        kat.kanify(nn.Sequential(_MyMLP(12, 48, nn.GELU())), predicate=lambda n, m: isinstance(m, _MyMLP))


# --- GroupRational2d -----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_group_rational_2d_matches_channels_last(impl, device):
    torch.manual_seed(0)
    layer2d = GroupRational2d(24, init="gelu", impl=impl, device=device)
    layer = GroupRational(24, init="gelu", impl=impl, device=device)
    with torch.no_grad():  # non-trivial coefficients, the same in both layers
        layer2d.weight_numerator.add_(0.05 * torch.randn_like(layer2d.weight_numerator))
        layer2d.weight_denominator.add_(0.3 * torch.randn_like(layer2d.weight_denominator))
    layer.load_state_dict(layer2d.state_dict())
    x = torch.randn(2, 24, 5, 7, device=device, requires_grad=True)
    xl = x.detach().permute(0, 2, 3, 1).clone().requires_grad_(True)
    y2d, yl = layer2d(x), layer(xl)
    torch.testing.assert_close(y2d, yl.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y2d)
    y2d.backward(g)
    yl.backward(g.permute(0, 2, 3, 1))
    torch.testing.assert_close(x.grad, xl.grad.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer2d.weight_numerator.grad, layer.weight_numerator.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer2d.weight_denominator.grad, layer.weight_denominator.grad, rtol=1e-4, atol=1e-5)


def test_group_rational_2d_in_a_cnn():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), GroupRational2d(16, init="relu"), nn.Conv2d(16, 8, 3))
    assert net(torch.randn(2, 3, 12, 12)).shape == (2, 8, 10, 10)


# --- language-model example ----------------------------------------------------------------------

def test_char_lm_example_runs_and_both_learn(tmp_path):
    spec = importlib.util.spec_from_file_location("char_lm", ROOT / "examples" / "char_lm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "lm.json"
    results = mod.main(["--steps", "120", "--json", str(out)])
    assert [r["mlp"] for r in results] == ["gelu", "kat"]
    for r in results:
        assert np.isfinite(r["val_loss"]) and r["val_loss"] < r["val_loss_start"] - 1.5, r
    assert json.loads(out.read_text()) == results


# --- export --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_matches_pytorch(tmp_path, dynamo):
    import onnxruntime as ort  # a test dependency: a missing package fails, it does not skip
    torch.manual_seed(0)
    model = timm.create_model("kat_tiny_patch16_224").eval()
    path = kat.export_onnx(model, tmp_path / "kat_tiny.onnx", dynamo=dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 224, 224)  # batch 3: the batch dimension is dynamic
    onnx_logits = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        logits = model(x).numpy()
    assert onnx_logits.shape == (3, 1000)
    assert np.abs(onnx_logits - logits).max() <= 1e-4
    assert all(m.impl == "auto" for m in model.modules() if isinstance(m, GroupRational))  # restored


def test_torch_export_matches_eager():
    torch.manual_seed(0)
    model = timm.create_model("kat_tiny_patch16_224", img_size=64, num_classes=10).eval()
    program = kat.export_program(model, (3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


# --- FLOPs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,paper_delta", [("tiny", 0.05), ("small", 0.10), ("base", 0.19)])
def test_flops_delta_matches_paper(size, paper_delta):
    k = flops_report(timm.create_model(f"kat_{size}_patch16_224"))
    v = flops_report(timm.create_model(f"vit_{size}_patch16_224"))
    delta = (k.total_flops - v.total_flops) / 1e9
    assert abs(delta - paper_delta) <= 0.01, delta
    assert k.flops_without_rationals == v.total_flops and k.parameters_without_rationals == v.parameters
    assert v.rational_flops == 0 and k.rational_parameters == 912


def test_bench_flops_cli_kanify(tmp_path):
    from kat.cli import bench
    out = tmp_path / "flops.json"
    assert bench.main(["flops", "--models", "vit_tiny_patch16_224", "--kanify", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["kanified"] and row["rational_parameters"] == 912
    assert row["gflops"] - row["gflops_without_rationals"] == pytest.approx(row["rational_gflops"])


def _overflow_batch():
    """Rows that overflow the direct form (|x| >= 4e7 with an x^5 term), NaN/Inf, signed zeros, and
    one ordinary row."""
    x = torch.randn(2, 16)  # batch 2: kat.export_program's example batch, which its program keeps
    x[0] = torch.tensor([1e30, -1e30, 1e8, -1e8, 5e7, 3e38, -3e38, float("nan"), float("inf"), -float("inf"),
                         0.0, -0.0, 1.0, 2e38, 4e7, 1e-30])
    return x


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_exported_rational_keeps_the_overflow_safe_form(tmp_path, dynamo):
    """Exported graphs decide per call whether the scaled form is needed (torch.cond / ONNX If):
    both outcomes give the reference's values, NaN/Inf included."""
    import onnxruntime as ort
    from kat.ops.group_rational.reference import group_rational_reference
    layer = GroupRational(16, groups=8, init="swish").eval()
    path = kat.export_onnx(layer, tmp_path / "r.onnx", input_size=(16,), dynamo=dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    program = kat.export_program(layer, (16,))
    if dynamo:  # one If around the scaled form, not both forms for every element
        import onnx
        assert "If" in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "cond" in str(program.graph)
    for x in (_overflow_batch(), torch.randn(2, 16)):
        with torch.no_grad():
            ref = group_rational_reference(x, layer.weight_numerator, layer.weight_denominator)
            got_program = program.module()(x)
        assert torch.isfinite(ref[0, :7]).all()  # the scaled form's answers, not Inf/NaN
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], ref.numpy(), rtol=1e-6, equal_nan=True)
        torch.testing.assert_close(got_program, ref, rtol=1e-6, atol=0, equal_nan=True)
