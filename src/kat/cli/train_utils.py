"""kat-train's small helpers: running means over ranks, the epoch CSV, TensorBoard, checkpoint
metadata as primitives, optimizer extras."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import torch

from .common import DistInfo, all_reduce_sum

_log = logging.getLogger("kat")


def _raise_if_nonfinite(bad_step: torch.Tensor, bad_loss: torch.Tensor, epoch: int) -> None:
    step = int(bad_step.item())
    if step >= 0:
        raise FloatingPointError(f"non-finite loss {bad_loss.item()} at step {step} (epoch {epoch}); "
                                 "lower --lr, use --clip-grad, or pass --skip-nonfinite")


def all_mean(total: float, count: float, d: DistInfo) -> float:
    total, count = all_reduce_sum([total, count], d)
    return total / count if count else math.nan


def _write_csv(path: Path, epoch, train_loss, m, lr, elapsed):
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "elapsed_s"])
        w.writerow([epoch, f"{train_loss:.5f}", f"{m['loss']:.5f}", f"{m['top1']:.3f}", f"{m['top5']:.3f}",
                    f"{lr:.6g}", f"{elapsed:.1f}"])


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _log.warning("--tensorboard: tensorboard is not installed; skipping")
        return None
    return SummaryWriter(str(out / "tb"))


def _plain(obj):
    """Checkpoint metadata as primitives only, so weights_only=True can read it back."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj if obj is None or isinstance(obj, (bool, int, float, str)) else str(obj)


def optimizer_kwargs(opt: str, device_type: str, fused: str) -> dict:
    """Extra optimizer arguments: PyTorch's fused Adam/AdamW kernel on CUDA unless ``--fused-opt off``
    (timm passes them through to torch.optim; other optimizers keep their defaults)."""
    if fused == "auto" and device_type == "cuda" and opt.lower() in ("adam", "adamw"):
        return {"fused": True}
    return {}


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
