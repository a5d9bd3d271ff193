"""The Fashion-MNIST comparison (RESULTS.md): its recipe runs on the CPU with the digits set, the
ViT and KAT it compares differ by the rational coefficients only, and RESULTS.md's table is what the
committed logs say."""
import importlib.util
import json
from pathlib import Path

import pytest

from kat.cli import train

ROOT = Path(__file__).resolve().parents[1]


def _results_module():
    spec = importlib.util.spec_from_file_location("fashion_results", ROOT / "benchmarks" / "fashion_mnist_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("variant", ["vit", "kat", "kat_identity", "kat_gelu"])
def test_recipe_smoke_on_digits(variant, tmp_path):
    """The same config as the GPU runs, with --dataset digits and a few steps (CI smoke test)."""
    out = tmp_path / variant
    args = ["-c", str(ROOT / "configs" / f"fashion_mnist_{variant}.yaml"), "--dataset", "digits", "--epochs", "1",
            "--max-steps", "3", "--batch-size", "32", "--workers", "0", "--output", str(out)]
    assert train.main(args) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["steps"] == 3 and res["first_loss"] == pytest.approx(2.3, abs=0.5)  # ~ln(10) at init
    assert 0.0 <= res["test_top1"] <= 100.0


def test_vit_and_kat_differ_by_rational_coefficients_only():
    from kat.layers import GroupRational
    mod = _results_module()
    vit = mod.config_model("fashion_mnist_vit.yaml")
    for config in ("fashion_mnist_kat.yaml", "fashion_mnist_kat_gelu.yaml", "fashion_mnist_kat_identity.yaml"):
        kat = mod.config_model(config)
        rational = {f"{n}.{k}": p for n, m in kat.named_modules() if isinstance(m, GroupRational)
                    for k, p in m.named_parameters()}
        assert len(rational) == 2 * 2 * 6  # two rationals per block, numerator + denominator, depth 6
        others = {k: p.shape for k, p in kat.named_parameters() if k not in rational}
        assert others == {k: p.shape for k, p in vit.named_parameters()}
        diff = sum(p.numel() for p in kat.parameters()) - sum(p.numel() for p in vit.parameters())
        assert diff == sum(p.numel() for p in rational.values()) == 6 * 2 * (6 + 8 * 4)
    mod.check_parameters()  # the script's own check, used when RESULTS.md is regenerated


def test_results_md_matches_committed_logs():
    mod = _results_module()
    text = (ROOT / "RESULTS.md").read_text()
    schedules = sorted(p.name for p in mod.RESULTS.iterdir() if p.is_dir())
    assert {"epochs10", "epochs30", "nowarmup10_lr1e-3"} <= set(schedules)
    for schedule in schedules:
        for row in mod.table(schedule).splitlines()[2:]:
            assert row in text, f"RESULTS.md lacks the {schedule} row {row!r} computed from results/"
