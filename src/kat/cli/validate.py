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
from .common import (amp_dtype, build_eval_data, check_image_size, create_model, eval_loader, evaluate,
                     load_checkpoint_file, model_weights, parse_kwargs, setup_distributed)

_log = logging.getLogger("kat")


def build_parser():
    p = argparse.ArgumentParser(prog="kat-validate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="kat-train checkpoint, official .pth, or .safetensors")
    p.add_argument("--model", default=None, help="default: the checkpoint's model")
    p.add_argument("--model-kwargs", default=None, type=parse_kwargs)
    p.add_argument("--pretrained", action="store_true", help="timm pretrained weights (hub) instead of a checkpoint")
    p.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    p.add_argument("--dataset", default=None, help="digits | fashion-mnist | folder root (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--val-split", default="validation")
    p.add_argument("--split-seed", type=int, default=None)
    p.add_argument("--skip-corrupt", action="store_true")
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--csv", default=None, help="append the result as a CSV row here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    d = setup_distributed(args.device)
    ck = load_checkpoint_file(args.checkpoint) if args.checkpoint else {}
    saved = ck.get("args", {}) if isinstance(ck.get("args"), dict) else {}
    args.model = args.model or saved.get("model")
    if not args.model:
        raise SystemExit("kat-validate: give --model (the checkpoint does not name one)")
    if args.model_kwargs is None:
        args.model_kwargs = saved.get("model_kwargs", {}) if args.model == saved.get("model") else {}
    args.dataset = args.dataset or saved.get("dataset")
    if not args.dataset:
        raise SystemExit("kat-validate: give --dataset (the checkpoint does not name one)")
    args.data_dir = args.data_dir or saved.get("data_dir")
    args.split_seed = args.split_seed if args.split_seed is not None else saved.get("split_seed", 0)
    dataset, info = build_eval_data(args, dist_info=d)
    kwargs = dict(args.model_kwargs)
    trained_on = ck.get("dataset") or {}
    if trained_on.get("input_size") and "img_size" not in kwargs:  # the size the weights were trained at
        kwargs["img_size"] = tuple(trained_on["input_size"][1:])
    model = create_model(args.model, info, kwargs, pretrained=args.pretrained)
    if info.name in EMBEDDED:  # folder datasets are resized by the eval transform
        check_image_size(model, info.input_size[1:])
    if ck:
        # kat-train evaluates the EMA weights when it keeps them; do the same so numbers agree
        model.load_state_dict(model_weights(ck, args.use_ema or bool(saved.get("model_ema"))))
    model.to(d.device)
    loader = eval_loader(dataset, args.batch_size, args.workers, d)
    result = {"model": args.model, "checkpoint": args.checkpoint, "dataset": info.name,
              **evaluate(model, loader, d.device, amp_dtype(args.amp), d)}
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
                w.writerow(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
