"""kat-predict: top-k class names for image files.

    kat-predict --checkpoint output/train/model_best.pth digit.png
    kat-predict --model kat_tiny_patch16_224 --pretrained cat.jpg        # ImageNet names from timm

Class names come from the checkpoint's dataset (kat-train records them), or timm's ImageNet
metadata for 1000-class models.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from ..data import EMBEDDED
from .common import checkpoint_model, load_checkpoint_file, parse_kwargs
from .errors import ArgumentParser, add_debug_flag, run_cli, usage_phase


def build_parser():
    p = ArgumentParser(prog="kat-predict", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Top-k class names for image files, from a kat-train checkpoint (its class "
                                   "names) or timm pretrained weights (ImageNet names). Unreadable files are "
                                   "reported and skipped; the exit code is then 1.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", default=None, help="kat-train checkpoint, official .pth, or .safetensors")
    p.add_argument("--model", default=None, help="timm model name (default: the checkpoint's model)")
    p.add_argument("--model-kwargs", default=argparse.SUPPRESS, type=parse_kwargs,
                   help="passed to timm.create_model (default: the checkpoint's)")
    p.add_argument("--pretrained", action="store_true", help="timm pretrained weights (hub) instead of a checkpoint")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_debug_flag(p)
    return p


def _class_names(num_classes: int, dataset: dict):
    names = dataset.get("class_names")
    if names and len(names) == num_classes:
        return list(names)
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def _transform(model, dataset: dict):
    """What kat-train evaluated with: the embedded datasets' resize and normalisation, or for image
    folders (and timm's pretrained models) the resize / 0.875 + centre crop of timm's eval transform."""
    from PIL import Image
    if dataset.get("name") in EMBEDDED:  # grey images in [0, 1], normalised with the train mean/std
        chans, h, w = dataset["input_size"]
        mean, std = torch.tensor(dataset["mean"]).view(-1, 1, 1), torch.tensor(dataset["std"]).view(-1, 1, 1)

        def transform(img):
            img = img.convert("L" if chans == 1 else "RGB").resize((w, h), Image.BILINEAR)
            t = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).view(h, w, chans).permute(2, 0, 1) / 255
            return (t - mean) / std
        return transform
    from timm.data import create_transform, resolve_data_config
    if dataset:
        cfg = dict(input_size=tuple(dataset["input_size"]), mean=tuple(dataset["mean"]), std=tuple(dataset["std"]),
                   crop_pct=0.875, interpolation="bicubic")
    else:
        cfg = resolve_data_config({}, model=model)
    inner = create_transform(**cfg)
    return lambda img: inner(img.convert("RGB"))


def cli(argv=None) -> int:
    """The kat-predict console script: errors as one line (``--debug``: the traceback)."""
    return run_cli("kat-predict", main, argv)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from PIL import Image
    with usage_phase():
        if args.topk < 1:
            raise ValueError(f"--topk must be at least 1, got {args.topk}")
        ck = load_checkpoint_file(args.checkpoint) if args.checkpoint else {}
        dataset = ck.get("dataset", {})
        model = checkpoint_model(ck, args.model, getattr(args, "model_kwargs", None), pretrained=args.pretrained)
    model.eval()
    transform = _transform(model, dataset)
    names = _class_names(model.num_classes, dataset)
    results, failed = [], 0
    with torch.no_grad():
        for path in args.images:
            try:
                img = Image.open(path)
                img.load()
                x = transform(img).unsqueeze(0)
            except Exception as e:
                failed += 1
                print(f"kat-predict: cannot read image {path}: {' '.join(str(e).split())}", file=sys.stderr)
                continue
            probs = model(x).softmax(-1)[0]
            top = probs.topk(min(args.topk, len(probs)))
            results.append({"image": path, "top": [{"class": names[i], "index": int(i), "prob": round(float(p), 4)}
                                                   for p, i in zip(top.values, top.indices)]})
            if not args.json:
                r = results[-1]
                print(r["image"] + ": " + ", ".join(f"{t['class']} ({t['prob']:.3f})" for t in r["top"]), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    if failed:
        print(f"kat-predict: {failed} of {len(args.images)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli())
