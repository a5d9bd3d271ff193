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

from .common import checkpoint_model, load_checkpoint_file, parse_kwargs


def build_parser():
    p = argparse.ArgumentParser(prog="kat-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--model-kwargs", default=None, type=parse_kwargs)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from PIL import Image
    ck = load_checkpoint_file(args.checkpoint) if args.checkpoint else {}
    dataset = ck.get("dataset", {})
    try:
        model = checkpoint_model(ck, args.model, args.model_kwargs, pretrained=args.pretrained)
    except ValueError as e:
        raise SystemExit(f"kat-predict: {e}")
    model.eval()
    if dataset:  # kat-train's embedded datasets: grey images in [0, 1], normalised with the train mean/std
        chans, h, w = dataset["input_size"]
        mean, std = torch.tensor(dataset["mean"]).view(-1, 1, 1), torch.tensor(dataset["std"]).view(-1, 1, 1)

        def transform(img):
            img = img.convert("L" if chans == 1 else "RGB").resize((w, h), Image.BILINEAR)
            t = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).view(h, w, chans).permute(2, 0, 1) / 255
            return (t - mean) / std
    else:
        from timm.data import create_transform, resolve_data_config
        transform = create_transform(**resolve_data_config({}, model=model))
    names = _class_names(model.num_classes, dataset)
    results = []
    with torch.no_grad():
        for path in args.images:
            try:
                img = Image.open(path)
                img.load()
            except Exception as e:
                raise SystemExit(f"kat-predict: cannot read image {path}: {e}")
            probs = model(transform(img).unsqueeze(0)).softmax(-1)[0]
            top = probs.topk(min(args.topk, len(probs)))
            results.append({"image": path, "top": [{"class": names[i], "index": int(i), "prob": round(float(p), 4)}
                                                   for p, i in zip(top.values, top.indices)]})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(r["image"] + ": " + ", ".join(f"{t['class']} ({t['prob']:.3f})" for t in r["top"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
