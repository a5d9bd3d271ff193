"""kat-validate: top-1/top-5 accuracy, loss and img/s of a model + checkpoint on a dataset.

    kat-validate --checkpoint output/train/model_best.pth          # model/dataset/split from the checkpoint
    kat-validate --model kat_tiny_patch16_224 --pretrained --dataset /imagenet --val-split validation

A checkpoint written by kat-train carries its model name, model kwargs, dataset and split, so the
accuracy it reported is reproduced by default. Results print as JSON and can be saved (--json/--csv).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from ..data import EMBEDDED
from .common import (SkipLog, all_gather_names, amp_dtype, build_eval_data, check_channels, check_image_size,
                     create_model, eval_loader, evaluate, load_checkpoint_file, load_weights, model_weights,
                     parse_kwargs, resolve_data_args, setup_distributed)
from .errors import ArgumentParser, add_debug_flag, run_cli, usage_phase

_log = logging.getLogger("kat")


def build_parser():
    p = ArgumentParser(prog="kat-validate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Top-1/top-5 accuracy, loss and img/s of a model and checkpoint on a dataset. "
                                   "A kat-train checkpoint names its model, model kwargs and dataset, so by "
                                   "default it reproduces the accuracy kat-train reported.")
    p.add_argument("--checkpoint", default=None, help="kat-train checkpoint, official .pth, or .safetensors")
    p.add_argument("--model", default=None, help="timm model name (default: the checkpoint's model)")
    p.add_argument("--model-kwargs", default=argparse.SUPPRESS, type=parse_kwargs,
                   help="passed to timm.create_model (default: the checkpoint's, if --model is its model)")
    p.add_argument("--pretrained", action="store_true", help="timm pretrained weights (hub) instead of a checkpoint")
    p.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    p.add_argument("--dataset", default=None,
                   help="digits | fashion-mnist | an image-folder root (default: --data-dir if given, else the "
                        "checkpoint's dataset)")
    p.add_argument("--data-dir", default=None,
                   help="an image folder, or Fashion-MNIST's idx folder (default: the checkpoint's)")
    p.add_argument("--val-split", default="validation", help="image folders: the evaluation subfolder")
    p.add_argument("--split-seed", type=int, default=None, help="digits: the train/test split (default: the checkpoint's)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave unreadable images out of the accuracy (listed in the result) instead of stopping")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--amp", default="none", choices=["none", "auto", "bf16", "fp16"],
                   help="autocast dtype (auto: bf16 on a GPU, none on the CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--csv", default=None, help="append the result as a CSV row here")
    add_debug_flag(p)
    return p


def _resolve(args, saved: dict) -> None:
    """Dataset and model from the arguments, the checkpoint filling in what they leave out."""
    args.model = args.model or saved.get("model")
    if not args.model:
        raise ValueError("give --model (the checkpoint does not name one)")
    if getattr(args, "model_kwargs", None) is None:
        args.model_kwargs = saved.get("model_kwargs", {}) if args.model == saved.get("model") else {}
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.dataset is None and not (args.data_dir and saved.get("dataset") == "fashion-mnist"):
        args.dataset = args.data_dir  # --data-dir alone: that folder
    if args.dataset is None:
        args.dataset = saved.get("dataset")
        args.data_dir = args.data_dir or saved.get("data_dir")
    if not args.dataset:
        raise ValueError("give --dataset or --data-dir (the checkpoint does not name a dataset)")
    args.split_seed = args.split_seed if args.split_seed is not None else saved.get("split_seed", 0)
    resolve_data_args(args)


def cli(argv=None) -> int:
    """The kat-validate console script: errors as one line (``--debug``: the traceback)."""
    return run_cli("kat-validate", main, argv)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    skip_log = SkipLog() if args.skip_corrupt else None
    try:
        return _validate(args, skip_log)
    finally:
        if skip_log is not None:
            skip_log.close()


def _validate(args, skip_log) -> int:
    with usage_phase():
        d = setup_distributed(args.device)
        ck = load_checkpoint_file(args.checkpoint) if args.checkpoint else {}
        saved = ck.get("args", {}) if isinstance(ck.get("args"), dict) else {}
        _resolve(args, saved)
        dataset, info = build_eval_data(args, dist_info=d, skip_log=skip_log)
        kwargs = dict(args.model_kwargs)
        trained_on = ck.get("dataset") or {}
        if trained_on.get("input_size"):
            check_channels(trained_on, info)
            if "img_size" not in kwargs:  # the size the weights were trained at
                kwargs["img_size"] = tuple(trained_on["input_size"][1:])
        model = create_model(args.model, info, kwargs, pretrained=args.pretrained)
        if info.name in EMBEDDED:  # folder datasets are resized by the eval transform
            check_image_size(model, info.input_size[1:])
        if ck:
            # kat-train evaluates the EMA weights when it keeps them; do the same so numbers agree
            load_weights(model, model_weights(ck, args.use_ema or bool(saved.get("model_ema"))), args.checkpoint)
    model.to(d.device)
    loader = eval_loader(dataset, args.batch_size, args.workers, d)
    result = {"model": args.model, "checkpoint": args.checkpoint, "dataset": info.name,
              **evaluate(model, loader, d.device, amp_dtype(args.amp, d.device), d)}
    if skip_log is not None:
        result["skipped_images"] = all_gather_names(skip_log.names(), d)
    if d.is_main:
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        if args.csv:
            new = not Path(args.csv).exists()
            with open(args.csv, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(result))
                if new:
                    w.writeheader()
                w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(cli())
