"""Datasets for the tools: two embedded ones that need no network, and folders through timm.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), split into
  train/test by a fixed seed (``split_seed``, default 0; 20% test).
- ``fashion-mnist``: the 28x28 Fashion-MNIST idx files (70,000 images, the official 60k/10k split)
  from Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist) or any folder
  holding the same four ``*-idx?-ubyte[.gz]`` files.
- ``synthetic``: random images of any size with arbitrary labels, generated in memory -- for
  measuring training throughput (multi-GPU scaling) without a dataset; accuracy is meaningless.
- anything else: an image folder (``root/train/<class>/*.png``, ``root/val/<class>/...``) or any
  dataset timm's ``create_dataset`` reads.

Embedded datasets are small tensors kept in memory; images are single-channel in [0, 1].
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["TensorImageDataset", "DatasetInfo", "load_digits", "load_fashion_mnist", "embedded_dataset",
           "EMBEDDED", "SyntheticImages", "DeviceSyntheticBatches", "device_synthetic_loader", "synthetic_dataset",
           "FASHION_MNIST_DIRS", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")


@dataclass
class DatasetInfo:
    """What a model and the tools need to know about a dataset."""
    name: str
    num_classes: int
    class_names: list[str]
    input_size: tuple[int, int, int]  # (channels, height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra: dict = field(default_factory=dict)


class TensorImageDataset(Dataset):
    """Images (N, C, H, W) float in [0, 1] and integer labels, normalised on access; optional
    train-time augmentation (random shifts by zero-padded crops, no flips: digits are not symmetric)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, pad: int = 0):
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected images (N, C, H, W) and N labels, got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        self.images, self.labels, self.pad = images, labels.long(), pad
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.pad:
            h, w = img.shape[-2:]
            padded = torch.nn.functional.pad(img, (self.pad,) * 4)
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = padded[:, dy:dy + h, dx:dx + w]
        return (img - self.mean) / self.std, self.labels[i]


def load_digits(split_seed: int = 0, test_fraction: float = 0.2):
    """(train_images, train_labels, test_images, test_labels) from scikit-learn's digits, in [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits
    data = sk_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(test_fraction * len(labels)))
    test, train = perm[:n_test], perm[n_test:]
    return images[train], labels[train], images[test], labels[test]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path} is not an idx file (too short)")
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {arr.size} bytes (truncated?)")
    return arr.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root} has no {stem}[.gz] (Fashion-MNIST idx files expected)")


def load_fashion_mnist(root: Optional[str | os.PathLike] = None):
    """(train_images, train_labels, test_images, test_labels), images (N, 1, 28, 28) in [0, 1]."""
    candidates = [Path(root)] if root else [Path(d) for d in FASHION_MNIST_DIRS]
    for d in candidates:
        if d.is_dir():
            out = []
            for split in ("train", "t10k"):
                x = _read_idx(_find_idx(d, f"{split}-images-idx3-ubyte"))
                y = _read_idx(_find_idx(d, f"{split}-labels-idx1-ubyte"))
                out += [torch.from_numpy(x.copy()).float().div_(255).unsqueeze(1), torch.from_numpy(y.copy()).long()]
            return tuple(out)
    where = root or " or ".join(FASHION_MNIST_DIRS)
    raise FileNotFoundError(f"Fashion-MNIST not found at {where}; install Debian's dataset-fashion-mnist "
                            "package or pass --data-dir with the four idx files")


EMBEDDED = ("digits", "fashion-mnist")


def embedded_dataset(name: str, root: Optional[str] = None, split_seed: int = 0, augment: bool = True):
    """(train_dataset, test_dataset, DatasetInfo) for an embedded dataset name."""
    if name == "digits":
        xtr, ytr, xte, yte = load_digits(split_seed)
        classes, pad = [str(i) for i in range(10)], 1
    elif name == "fashion-mnist":
        xtr, ytr, xte, yte = load_fashion_mnist(root)
        classes, pad = list(FASHION_MNIST_CLASSES), 2
    else:
        raise ValueError(f"unknown embedded dataset {name!r}; choose one of {EMBEDDED}")
    mean, std = (xtr.mean().item(),), (xtr.std().item(),)
    info = DatasetInfo(name, len(classes), classes, tuple(xtr.shape[1:]), mean, std,
                       extra={"split_seed": split_seed, "train_size": len(ytr), "test_size": len(yte)})
    train = TensorImageDataset(xtr, ytr, mean, std, pad=pad if augment else 0)
    test = TensorImageDataset(xte, yte, mean, std)
    return train, test, info


class SyntheticImages(Dataset):
    """``length`` images of ``input_size`` drawn from a small fixed pool of random images (so reading
    is cheap and deterministic), labels ``(7919 * i) % num_classes``; normalised like ImageNet."""

    def __init__(self, length: int, input_size=(3, 224, 224), num_classes: int = 1000, pool: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.rand(pool, *input_size, generator=g).sub_(0.45).div_(0.25)
        self.length, self.num_classes = length, num_classes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.pool[i % len(self.pool)], self.label(i)

    def label(self, i):
        """Label of image ``i`` (an int, or a tensor of indices)."""
        return (7919 * i) % self.num_classes


class DeviceSyntheticBatches:
    """Batches of a ``SyntheticImages`` gathered on ``device``: ``loader`` yields index batches (its
    sampler decides order, sharding and shuffling exactly as for the images themselves) and each is
    turned into (images, labels) by indexing a copy of the image pool kept on the device. No host
    data pipeline at all, for measuring the model and the all-reduce rather than the host's
    data loading; the batches equal the ones a DataLoader over the dataset would give."""

    def __init__(self, loader, dataset: SyntheticImages, device):
        self.loader, self.dataset, self.device = loader, dataset, torch.device(device)
        self.pool = dataset.pool.to(self.device)
        self.generator = getattr(loader, "generator", None)  # kat-train reseeds it every epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for idx in self.loader:
            idx = idx.to(self.device, non_blocking=True)
            yield self.pool[idx % len(self.pool)], self.dataset.label(idx)


def device_synthetic_loader(dataset: SyntheticImages, device, batch_size: int, sampler=None, shuffle=False,
                            generator=None, drop_last=True) -> DeviceSyntheticBatches:
    """``DeviceSyntheticBatches`` over a DataLoader of ``dataset``'s indices (same sampling arguments
    as the DataLoader it stands in for; no workers needed)."""
    from torch.utils.data import DataLoader
    index_loader = DataLoader(range(len(dataset)), batch_size=batch_size, sampler=sampler, shuffle=shuffle,
                              drop_last=drop_last, num_workers=0, generator=generator)
    return DeviceSyntheticBatches(index_loader, dataset, device)


def synthetic_dataset(image_size=224, train_size: int = 12800, test_size: int = 256, num_classes: int = 1000):
    """(train, test, DatasetInfo) of synthetic images (see ``SyntheticImages``)."""
    hw = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    size = (3, *hw)
    info = DatasetInfo("synthetic", num_classes, [str(i) for i in range(num_classes)], size,
                       (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                       extra={"train_size": train_size, "test_size": test_size})
    return (SyntheticImages(train_size, size, num_classes, seed=0),
            SyntheticImages(test_size, size, num_classes, seed=1), info)
