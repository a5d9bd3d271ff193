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
    """--model-kwargs: a YAML/JSON mapping ('{img_size: 28, patch_size: 4}'), or the same as
    key=value pairs ('img_size=28,patch_size=4'), or already a dict (from a config file)."""
    if isinstance(text, dict):
        return text
    if not text or not text.strip():
        return {}
    import yaml
    body = text.strip()
    if not body.startswith("{") and "=" in body:
        body = "{" + body.replace("=", ": ") + "}"
    try:
        value = yaml.safe_load(body)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--model-kwargs takes a mapping like '{{img_size: 28, patch_size: 4}}' "
                                         f"or 'img_size=28,patch_size=4', got {text!r}")
    return {str(k): v for k, v in value.items()}


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


def all_gather_names(names: list[str], info: DistInfo) -> list[str]:
    """The sorted union of every rank's ``names``."""
    if info.world == 1:
        return sorted(set(names))
    gathered: list = [None] * info.world
    dist.all_gather_object(gathered, names)
    return sorted({n for part in gathered for n in part})


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
        load_weights(model, model_weights(ck, use_ema=bool(saved.get("model_ema"))), "the checkpoint")
    return model


def load_weights(model, state_dict: dict, source) -> None:
    """``model.load_state_dict(state_dict)`` (strict), with a mismatch reported in one sentence that
    counts and names the first of each kind (PyTorch lists every one of them)."""
    own = model.state_dict()
    shapes = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != v.shape]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    parts = []
    if shapes:
        k, have, want = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of another shape (first: {k} is {have} in the file, {want} in "
                     "the model)")
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if parts:
        raise ValueError(f"{source} does not fit this model: {'; '.join(parts)}. Build the model the weights "
                         "were trained as (--model, --model-kwargs), or use another checkpoint")
    model.load_state_dict(state_dict)


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


def check_channels(trained_on: dict, info: DatasetInfo) -> None:
    """ValueError when a checkpoint's model takes another number of image channels than the data has."""
    want, have = trained_on["input_size"][0], info.input_size[0]
    if want != have:
        kind = {1: "grey (1-channel)", 3: "RGB (3-channel)"}
        raise ValueError(f"the checkpoint's model takes {kind.get(want, f'{want}-channel')} images "
                         f"({trained_on.get('name', '?')}) but {info.name} has {kind.get(have, f'{have}-channel')} "
                         "images; evaluate it on data like what it was trained on")


class CorruptImageError(RuntimeError):
    pass


class SkipLog:
    """The unreadable images a run skipped, each counted once across epochs, loader workers and ranks
    on one machine: a worker that meets one leaves a marker file in a temporary folder."""

    def __init__(self):
        import tempfile
        self.root = tempfile.mkdtemp(prefix="kat-skipped-")

    def add(self, name: str) -> bool:
        """Record ``name``; True the first time it is seen."""
        import hashlib
        marker = Path(self.root) / hashlib.sha1(name.encode()).hexdigest()
        try:
            with open(marker, "x") as f:
                f.write(name)
            return True
        except FileExistsError:
            return False

    def names(self) -> list[str]:
        return sorted(p.read_text() for p in Path(self.root).iterdir())

    def close(self) -> None:
        import shutil
        shutil.rmtree(self.root, ignore_errors=True)


class CheckedImageDataset(Dataset):
    """timm's ImageDataset, but an unreadable image stops the run with an error that names the file
    and ``--skip-corrupt``. With a ``skip_log``, unreadable images are recorded there instead: in
    training (``drop=False``) the next readable image takes the place of one, so batches keep their
    size; in evaluation (``drop=True``) it becomes None, and ``drop_none_collate`` leaves it out of
    the batch, so it is not in the accuracy's denominator."""

    def __init__(self, inner, skip_log: Optional[SkipLog] = None, drop: bool = True):
        self.inner, self.skip_log, self.drop = inner, skip_log, drop

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
                if self.skip_log is None:
                    raise CorruptImageError(f"cannot read image {name} ({e}); fix or remove it, or pass "
                                            "--skip-corrupt to skip unreadable images") from e
                if self.skip_log.add(str(name)):
                    _log.warning("skipping unreadable image %s: %s", name, e)
                if self.drop:
                    return None
                index = (index + 1) % len(self)
                continue
            if self.inner.transform is not None:
                img = self.inner.transform(img)
            return img, (-1 if target is None else target)
        raise CorruptImageError("no readable image in the dataset")


def drop_none_collate(batch):
    """default_collate without the samples that are None (unreadable images); None for a batch of
    only such samples."""
    from torch.utils.data import default_collate
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


def resolve_data_args(args) -> None:
    """--dataset and --data-dir, checked: ``--data-dir DIR`` alone (or with ``--dataset folder``) is
    that image folder; a folder that does not exist, or a --data-dir that a named dataset would
    ignore, is an error."""
    ds, dd = args.dataset, args.data_dir
    if dd is not None and not Path(dd).is_dir():
        raise FileNotFoundError(f"--data-dir {dd}: no such folder")
    if ds is None:
        args.dataset = dd if dd else "digits"
    elif ds == "folder":  # the --data-dir folder, said explicitly
        if not dd:
            raise ValueError("--dataset folder needs --data-dir DIR")
        args.dataset = dd
    elif ds in ("digits", "synthetic"):
        if dd:
            raise ValueError(f"--data-dir does not apply to --dataset {ds}; for your own image folder, leave "
                             "out --dataset (or give --dataset DIR)")
    elif ds != "fashion-mnist":  # an image-folder root
        if dd and Path(dd).resolve() != Path(ds).resolve():
            raise ValueError(f"--dataset {ds} and --data-dir {dd} name two different folders; give one")
        if not Path(ds).is_dir():
            raise FileNotFoundError(f"dataset folder not found: {ds!r} (--dataset takes digits, fashion-mnist, "
                                    "synthetic or an image folder with train/ and val/ subfolders)")


def build_eval_data(args, info_model=None, dist_info: DistInfo = DistInfo(), train: bool = False,
                    skip_log: Optional[SkipLog] = None):
    """(dataset, DatasetInfo) for evaluation (or the training split with ``train``), no augmentation.
    Image folders: unreadable images are an error, or recorded in ``skip_log`` and skipped."""
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
    return CheckedImageDataset(ds, skip_log, drop=not train), info


def synthetic_from_args(args):
    from ..data import synthetic_dataset
    size = (getattr(args, "model_kwargs", None) or {}).get("img_size", 224)
    return synthetic_dataset(size, train_size=getattr(args, "synthetic_size", 12800))


def eval_loader(dataset, batch_size: int, workers: int, dist_info: DistInfo) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), dist_info.rank,
                      dist_info.world), num_workers=workers, pin_memory=dist_info.device.type == "cuda",
                      collate_fn=drop_none_collate)


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, dist_info: DistInfo = DistInfo()) -> dict:
    """top-1/top-5 accuracy (%), mean loss and img/s over the loader, summed exactly over ranks."""
    model.eval()
    correct1 = correct5 = loss_sum = n = 0.0
    start = time.perf_counter()
    for batch in loader:
        if batch is None:  # only unreadable images (skipped)
            continue
        images, targets = batch
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


def amp_dtype(name: Optional[str], device: Optional[torch.device] = None):
    """--amp's autocast dtype; "auto" is bf16 on a GPU and None (fp32) on the CPU."""
    if name == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else None
    return {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def dump_json(obj, path):
    Path(path).write_text(json.dumps(obj, indent=1, default=str))
