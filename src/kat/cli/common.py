"""Plumbing shared by kat-train, kat-validate and kat-predict: configs, torchrun/DDP setup, atomic
checkpoints, datasets and loaders (timm's for folders), and exact sharded evaluation."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import EMBEDDED, DatasetInfo, embedded_dataset

_log = logging.getLogger("kat")


# --- configs -------------------------------------------------------------------------------------

def load_yaml_config(path: str) -> dict[str, Any]:
    """Read a YAML recipe with a safe loader; keys may use dashes or underscores."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(p) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must be a mapping of option: value, got {type(cfg).__name__}")
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``-c/--config`` first, use its values as defaults, then parse the command line over them.
    Unknown config keys are an error that names them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        cfg = load_yaml_config(known.config)
        dests = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - dests)
        if unknown:
            parser.error(f"config {known.config}: unknown option(s) {unknown}")
        parser.set_defaults(**cfg)
    return parser.parse_args(argv)


def parse_kwargs(text) -> dict:
    """--model-kwargs: a JSON/YAML mapping given inline, or already a dict (from a config file)."""
    if isinstance(text, dict):
        return text
    if not text:
        return {}
    import yaml
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise ValueError(f"--model-kwargs must be a mapping like '{{embed_dim: 64}}', got {text!r}")
    return value


# --- distributed ---------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto", timeout_s: float = 600) -> DistInfo:
    """Single process, or torchrun's env (RANK/WORLD_SIZE/LOCAL_RANK): NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, dev)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


class ShardSampler(Sampler):
    """Every rank takes indices rank, rank + world, ... (no padding, so sums over ranks are exact)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


# --- checkpoints ---------------------------------------------------------------------------------

def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file, fsync, then rename over ``path``: a crash never leaves a
    truncated file under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint_file(path: str | Path) -> dict:
    """A checkpoint dict, read without executing pickled code (``models.load_state_dict_file``);
    a ``.safetensors`` file comes back as ``{"state_dict": tensors}``."""
    from ..models import load_state_dict_file
    obj = load_state_dict_file(path)
    return {"state_dict": obj} if Path(path).suffix == ".safetensors" else obj


def checkpoint_model(ck: dict, name: Optional[str] = None, model_kwargs: Optional[dict] = None, **extra):
    """The model a checkpoint describes: kat-train records its model name, kwargs and dataset
    (classes, channels, image size); explicit arguments override. Weights are loaded when present."""
    saved, data = ck.get("args", {}), ck.get("dataset", {})
    name = name or saved.get("model")
    if not name:
        raise ValueError("give --model (the checkpoint does not name one)")
    kwargs = dict(model_kwargs if model_kwargs is not None else saved.get("model_kwargs", {}))
    if data:
        kwargs = {"num_classes": data["num_classes"], "in_chans": data["input_size"][0],
                  "img_size": data["input_size"][1:], **kwargs}
    model = create_model(name, None, kwargs, **extra)
    if ck:
        model.load_state_dict(model_weights(ck, use_ema=bool(saved.get("model_ema"))))
    return model


def model_weights(ckpt: dict, use_ema: bool = False) -> dict:
    from ..models import unwrap_state_dict
    if use_ema:
        for key in ("state_dict_ema", "model_ema"):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
        raise ValueError("checkpoint has no EMA weights (state_dict_ema)")
    return unwrap_state_dict(ckpt)


# --- models and data -----------------------------------------------------------------------------

def create_model(name: str, info: Optional[DatasetInfo], model_kwargs: dict, **extra):
    import timm

    import kat  # noqa: F401  (registers the KAT models)
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}; KAT models: {timm.list_models('kat_*')} "
                         "(any other timm name works too: see timm.list_models())")
    kwargs = dict(model_kwargs)
    if info is not None:
        kwargs.setdefault("num_classes", info.num_classes)
        kwargs.setdefault("in_chans", info.input_size[0])
        if info.name in EMBEDDED:
            kwargs.setdefault("img_size", info.input_size[1:])
    kwargs.update(extra)
    return timm.create_model(name, **kwargs)


def check_image_size(model, image_hw: Sequence[int]) -> None:
    """ValueError when a fixed-size model (timm ViT/KAT patch embedding) gets images of another size."""
    pe = getattr(model, "patch_embed", None)
    want = getattr(pe, "img_size", None)
    if want is None or getattr(pe, "dynamic_img_size", False) or not getattr(pe, "strict_img_size", True):
        return
    if tuple(want) != tuple(image_hw):
        raise ValueError(f"images are {image_hw[0]}x{image_hw[1]} but the model takes {want[0]}x{want[1]} "
                         f"(a fixed input size); use data of that size or a model built with "
                         f"img_size={tuple(image_hw)}")


class CheckedImageDataset(Dataset):
    """timm's ImageDataset, but an unreadable image is an error naming its file (or, with
    ``skip_corrupt``, skipped and counted) instead of a silent skip."""

    def __init__(self, inner, skip_corrupt: bool = False):
        self.inner, self.skip_corrupt, self.skipped = inner, skip_corrupt, 0

    @property
    def transform(self):  # timm's create_loader sets dataset.transform: forward it to the inner dataset
        return self.inner.transform

    @transform.setter
    def transform(self, value):
        self.inner.transform = value

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        from PIL import Image
        reader = self.inner.reader
        for _ in range(len(self)):
            img, target = reader[index][:2]
            try:
                img = Image.open(img)
                img = img.convert(self.inner.input_img_mode or "RGB")
            except Exception as e:
                name = reader.filename(index, absolute=True)
                if not self.skip_corrupt:
                    raise RuntimeError(f"cannot read image {name}: {e}") from e
                self.skipped += 1
                _log.warning("skipped unreadable image %s (%d so far): %s", name, self.skipped, e)
                index = (index + 1) % len(self)
                continue
            if self.inner.transform is not None:
                img = self.inner.transform(img)
            return img, (-1 if target is None else target)
        raise RuntimeError("no readable image in the dataset")


def build_eval_data(args, info_model=None, dist_info: DistInfo = DistInfo(), train: bool = False):
    """(dataset, DatasetInfo) for evaluation (or the training split with ``train``), no augmentation."""
    if args.dataset in EMBEDDED:
        tr, te, info = embedded_dataset(args.dataset, args.data_dir, args.split_seed, augment=False)
        return (tr if train else te), info
    if args.dataset == "synthetic":
        tr, te, info = synthetic_from_args(args)
        return (tr if train else te), info
    import timm.data
    root = args.data_dir or args.dataset
    if not root or not Path(root).exists():
        raise FileNotFoundError(f"dataset path not found: {root!r} (use --dataset digits | fashion-mnist "
                                "or --data-dir DIR with train/ and val/ image folders)")
    split = args.train_split if train else args.val_split
    ds = timm.data.create_dataset("", root=root, split=split, is_training=False)
    classes = sorted(ds.reader.class_to_idx, key=ds.reader.class_to_idx.get)
    size = (getattr(args, "model_kwargs", None) or {}).get("img_size", 224)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    info = DatasetInfo(Path(root).name, len(classes), classes, (3, *size), timm.data.IMAGENET_DEFAULT_MEAN,
                       timm.data.IMAGENET_DEFAULT_STD)
    # The KAT/DeiT evaluation transform: resize to size / 0.875, centre crop, bicubic.
    ds.transform = timm.data.create_transform(info.input_size, is_training=False, crop_pct=0.875,
                                              interpolation="bicubic", mean=info.mean, std=info.std)
    return CheckedImageDataset(ds, getattr(args, "skip_corrupt", False)), info


def synthetic_from_args(args):
    from ..data import synthetic_dataset
    size = (getattr(args, "model_kwargs", None) or {}).get("img_size", 224)
    return synthetic_dataset(size, train_size=getattr(args, "synthetic_size", 12800))


def eval_loader(dataset, batch_size: int, workers: int, dist_info: DistInfo) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), dist_info.rank,
                      dist_info.world), num_workers=workers, pin_memory=dist_info.device.type == "cuda")


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, dist_info: DistInfo = DistInfo()) -> dict:
    """top-1/top-5 accuracy (%), mean loss and img/s over the loader, summed exactly over ranks."""
    model.eval()
    correct1 = correct5 = loss_sum = n = 0.0
    start = time.perf_counter()
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hit = top == targets[:, None]
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(dim=-1).sum().item()
        n += len(targets)
    elapsed = time.perf_counter() - start
    correct1, correct5, loss_sum, n = all_reduce_sum([correct1, correct5, loss_sum, n], dist_info)
    if n == 0:
        raise ValueError("evaluation set is empty")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n,
            "images": int(n), "img_s": n / max(elapsed, 1e-9)}


def amp_dtype(name: Optional[str]):
    return {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def dump_json(obj, path):
    Path(path).write_text(json.dumps(obj, indent=1, default=str))
