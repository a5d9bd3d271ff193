"""Device-resident synthetic batches equal the DataLoader's batches over the same dataset."""
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from kat.data import SyntheticImages, device_synthetic_loader


def _batches(loader):
    return [(x.cpu(), y.cpu()) for x, y in loader]


@pytest.mark.parametrize("shuffle", [False, True])
def test_device_synthetic_batches_equal_the_dataloaders(shuffle):
    ds = SyntheticImages(40, (3, 8, 8), num_classes=10, pool=6)
    ref = DataLoader(ds, batch_size=8, shuffle=shuffle, drop_last=True, generator=torch.Generator().manual_seed(3))
    dev = device_synthetic_loader(ds, "cpu", 8, shuffle=shuffle, generator=torch.Generator().manual_seed(3))
    assert len(dev) == len(ref) == 5
    got, want = _batches(dev), _batches(ref)
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert torch.equal(gx, wx) and torch.equal(gy, wy)
    if shuffle:  # reseeding the loader's generator (kat-train does, every epoch) changes the order
        dev.generator.manual_seed(4)
        assert not all(torch.equal(a[1], b[1]) for a, b in zip(_batches(dev), want))


def test_device_synthetic_batches_shard_like_a_distributed_sampler():
    ds = SyntheticImages(48, (3, 4, 4), num_classes=7, pool=5)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, 2, rank, shuffle=True, seed=1)
        ref = DataLoader(ds, batch_size=6, sampler=sampler, drop_last=True)
        dev = device_synthetic_loader(ds, "cpu", 6, sampler=sampler)
        for (gx, gy), (wx, wy) in zip(_batches(dev), _batches(ref), strict=True):
            assert torch.equal(gx, wx) and torch.equal(gy, wy)
            seen.append(gy)
    assert sum(len(y) for y in seen) == 48
