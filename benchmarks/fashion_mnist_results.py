"""Tables and plots for RESULTS.md from the committed Fashion-MNIST run logs.

    python benchmarks/fashion_mnist_results.py            # prints the markdown tables, writes docs/*.png

Reads results/fashion_mnist/<schedule>/<variant>_s<seed>/{result.json,summary.csv,rationals.pt}
(made by benchmarks/fashion_mnist_runs.sh on the GPU) and the configs in configs/. Also checks that the ViT and
the KATs differ in parameters by exactly the rational coefficients.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "fashion_mnist"
DOCS = ROOT / "docs"
VARIANTS = {  # run-name prefix -> (label, config)
    "vit": ("ViT (GELU MLP)", "fashion_mnist_vit.yaml"),
    "kat": ("KAT identity -> swish (default)", "fashion_mnist_kat.yaml"),
    "kat_gelu": ("KAT identity -> gelu (fitted)", "fashion_mnist_kat_gelu.yaml"),
    "kat_identity": ("KAT identity -> identity", "fashion_mnist_kat_identity.yaml"),
}


def runs(schedule: str) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for d in sorted((RESULTS / schedule).iterdir()):
        if (d / "result.json").is_file():
            variant = d.name.rsplit("_s", 1)[0]
            out.setdefault(variant, []).append(d)
    return out


def table(schedule: str) -> str:
    lines = ["| model | params | test top-1 per seed (%) | mean ± half-range | train img/s (runs sharing the GPU) |",
             "|---|---:|---|---:|---:|"]
    for variant, dirs in sorted(runs(schedule).items(), key=lambda kv: list(VARIANTS).index(kv[0])):
        res = [json.loads((d / "result.json").read_text()) for d in dirs]
        accs = [r["test_top1"] for r in res]
        seeds = ", ".join(f"s{d.name.rsplit('_s', 1)[1]}: {a:.2f}" for d, a in zip(dirs, accs))
        mean, half = statistics.mean(accs), (max(accs) - min(accs)) / 2
        rate = statistics.mean(r["train_img_per_s"] for r in res)
        params = {r["parameters"] for r in res}
        assert len(params) == 1, f"{variant}: runs disagree on the parameter count {params}"
        lines.append(f"| {VARIANTS[variant][0]} | {params.pop():,} | {seeds} | {mean:.2f} ± {half:.2f} | {rate:,.0f} |")
    return "\n".join(lines)


def config_model(config: str):
    """The model a Fashion-MNIST config trains (28x28 grey images, 10 classes)."""
    import yaml

    from kat.cli.common import create_model
    cfg = yaml.safe_load((ROOT / "configs" / config).read_text())
    return create_model(cfg["model"], None, {**cfg["model_kwargs"], "num_classes": 10, "in_chans": 1,
                                             "img_size": 28})


def check_parameters() -> str:
    """ViT and KAT built from the configs differ by the rational coefficients only."""
    from kat.layers import GroupRational
    vit = config_model(VARIANTS["vit"][1])
    vit_shapes = {k: tuple(p.shape) for k, p in vit.named_parameters()}
    lines = []
    for variant in ("kat", "kat_gelu", "kat_identity"):
        kat = config_model(VARIANTS[variant][1])
        rational = {f"{n}.{k}" for n, m in kat.named_modules() if isinstance(m, GroupRational)
                    for k, _ in m.named_parameters()}
        rest = {k: tuple(p.shape) for k, p in kat.named_parameters() if k not in rational}
        assert rest == vit_shapes, f"{variant}: non-rational parameters differ from the ViT's"
        n_rational = sum(p.numel() for k, p in kat.named_parameters() if k in rational)
        n_kat, n_vit = sum(p.numel() for p in kat.parameters()), sum(p.numel() for p in vit.parameters())
        assert n_kat - n_vit == n_rational
        lines.append(f"{variant}: {n_kat:,} = ViT {n_vit:,} + {n_rational} rational coefficients")
    return "\n".join(lines)


def plots(schedule: str = "epochs30") -> list[Path]:
    import torch

    from kat.cli.plot import plot_curves, plot_rationals
    all_runs = runs(schedule)
    order = [v for v in VARIANTS if v in all_runs]
    csvs = [d / "summary.csv" for v in order for d in all_runs[v]]
    labels = [f"{v} {d.name.rsplit('_', 1)[1]}" for v in order for d in all_runs[v]]
    out = [plot_curves(csvs, DOCS / "fashion_mnist_curves.png", ("train_loss", "eval_top1"), labels)]
    # The learned rationals of the best KAT run that kept its coefficients.
    kats = [d for v in order if v != "vit" for d in all_runs[v] if (d / "rationals.pt").is_file()]
    if kats:
        best = max(kats, key=lambda d: json.loads((d / "result.json").read_text())["test_top1"])
        variant = best.name.rsplit("_s", 1)[0]
        model = config_model(VARIANTS[variant][1])
        coeffs = torch.load(best / "rationals.pt", weights_only=True)
        missing, unexpected = model.load_state_dict(coeffs, strict=False)
        assert not unexpected and not any(k.endswith(("numerator", "denominator")) for k in missing)
        acc = json.loads((best / "result.json").read_text())["test_top1"]
        out.append(plot_rationals(model, DOCS / "fashion_mnist_rationals.png",
                                  title=f"{best.name} ({schedule}, {acc:.2f}% test top-1): learned rationals"))
    return out


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    for schedule in sorted(p.name for p in RESULTS.iterdir() if p.is_dir()):
        print(f"\n### {schedule}\n\n{table(schedule)}")
    print("\n" + check_parameters())
    for p in plots():
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
