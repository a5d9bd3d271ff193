"""kat-plot: draw a model's learned rational functions (one panel per layer, like the KAT paper's
Fig. 7) or training curves from kat-train's CSV logs, to PNG.

    kat-plot rationals --model kat_tiny_patch16_224 --checkpoint run/model_best.pth --out r.png
    kat-plot curves run_a/summary.csv run_b/summary.csv --out curves.png
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path
from typing import Sequence

from torch import nn

from .common import parse_kwargs
from .errors import ArgumentParser, add_debug_flag, run_cli, usage_phase

_log = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("kat-plot needs matplotlib: pip install 'kat-transformer[plot]' (or pip install "
                          "matplotlib)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path, rect=(0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rationals(model: nn.Module, path: str | Path, lo: float = -3.0, hi: float = 3.0,
                   columns: int = 4, title: str | None = None) -> Path:
    """Save a PNG with one panel per GroupRational in ``model`` (every group's curve in each)."""
    from ..layers import GroupRational
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, GroupRational)]
    if not layers:
        raise ValueError("plot_rationals: the model has no GroupRational layers")
    plt = _pyplot()
    cols = min(columns, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
    handles = None
    for i, (ax, (name, layer)) in enumerate(zip(axes.flat, layers)):
        x, y = layer.function_on_grid(lo, hi)
        lines = [ax.plot(x.numpy(), y[g].numpy(), lw=1.0)[0] for g in range(y.shape[0])]
        if handles is None or len(lines) > len(handles):
            handles = lines
        ax.set_title(name, fontsize=8)
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("F(x)", fontsize=8)
        if i >= len(layers) - cols:
            ax.set_xlabel("x", fontsize=8)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.legend(handles, [f"group {g}" for g in range(len(handles))], loc="lower center", ncol=min(8, len(handles)),
               fontsize=7, frameon=False)
    fig.suptitle(title or "learned rational functions F(x) = P(x) / Q(x), one curve per channel group",
                 fontsize=10)
    return _save(plt, fig, path, rect=(0, 0.05, 1, 1))  # room for the legend


_LABELS = {"train_loss": "training loss", "eval_loss": "test loss", "eval_top1": "test top-1 (%)",
           "eval_top5": "test top-5 (%)", "lr": "learning rate", "elapsed_s": "seconds since start"}


def plot_curves(csv_paths: Sequence[str | Path], path: str | Path,
                metrics: Sequence[str] = ("train_loss", "eval_top1"), labels: Sequence[str] | None = None) -> Path:
    """Save a PNG of per-epoch metrics (columns of kat-train's summary.csv), one panel per metric."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for i, csv_path in enumerate(csv_paths):
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"plot_curves: {csv_path} has no rows")
        label = labels[i] if labels else Path(csv_path).parent.name
        for ax, metric in zip(axes[0], metrics):
            if metric not in rows[0]:
                raise ValueError(f"plot_curves: {csv_path} has no column {metric!r} (has {list(rows[0])})")
            ax.plot([int(r["epoch"]) for r in rows], [float(r[metric]) for r in rows], label=label)
    for ax, metric in zip(axes[0], metrics):
        ax.set_xlabel("epoch")
        ax.set_ylabel(_LABELS.get(metric, metric))
        ax.set_title(metric)
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _describe(model: nn.Module, name: str) -> str:
    """The model's name with the shape it was built with: a custom-width model is not its namesake."""
    dim, depth = getattr(model, "embed_dim", None), len(getattr(model, "blocks", ()))
    return f"{name} (width {dim}, depth {depth})" if dim and depth else name


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="kat-plot", description="Draw a model's learned rational functions, or training "
                                                         "curves from kat-train's summary.csv files, to PNG. "
                                                         "Needs matplotlib: pip install 'kat-transformer[plot]'.")
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="what", required=True, help="what to draw")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    r = sub.add_parser("rationals", help="learned rational functions of a model", formatter_class=fmt)
    r.add_argument("--model", default=None, help="default: the checkpoint's model, else kat_tiny_patch16_224")
    r.add_argument("--checkpoint", default=None, help="kat-train checkpoint, official .pth or .safetensors")
    r.add_argument("--model-kwargs", default=argparse.SUPPRESS, type=parse_kwargs,
                   help="passed to timm.create_model (default: the checkpoint's)")
    r.add_argument("--range", type=float, nargs=2, default=(-3.0, 3.0), metavar=("LO", "HI"), help="x range drawn")
    r.add_argument("--out", required=True, help="PNG file to write")
    c = sub.add_parser("curves", help="training curves from kat-train summary.csv files", formatter_class=fmt)
    c.add_argument("csv", nargs="+", help="summary.csv files (one line per file)")
    c.add_argument("--metrics", nargs="+", default=["train_loss", "eval_top1"], help="columns to draw, one panel each")
    c.add_argument("--labels", nargs="+", default=None, help="one label per file (default: its folder name)")
    c.add_argument("--out", required=True, help="PNG file to write")
    return parser


def cli(argv=None) -> int:
    """The kat-plot console script: errors as one line (``--debug``: the traceback)."""
    return run_cli("kat-plot", main, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _pyplot()  # a missing matplotlib fails before any work
    if args.what == "rationals":
        from .common import checkpoint_model, load_checkpoint_file
        with usage_phase():
            ck = load_checkpoint_file(args.checkpoint) if args.checkpoint else {}
            name = args.model or ck.get("args", {}).get("model") or "kat_tiny_patch16_224"
            model = checkpoint_model(ck, name, getattr(args, "model_kwargs", None))
        out = plot_rationals(model, args.out, *args.range, title=_describe(model, name))
    else:
        with usage_phase():
            if args.labels and len(args.labels) != len(args.csv):
                raise ValueError(f"--labels: {len(args.labels)} label(s) for {len(args.csv)} file(s)")
        out = plot_curves(args.csv, args.out, args.metrics, args.labels)
    _log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
