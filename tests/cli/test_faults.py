"""Training faults: SIGKILL in the middle of a checkpoint write, a DDP rank dying, and the rows of
the bad-input table that belong to the tools (exact messages)."""
import subprocess
import sys
import time

import pytest
import torch

from kat.cli import train, validate
from kat.cli.common import create_model, load_checkpoint_file
from tests.cli.test_train import TINY, _env, _result, _torchrun

QUICK = TINY + ["--epochs", "3", "--no-augment", "--drop-path", "0", "--warmup-epochs", "0", "--log-interval", "1000"]


def test_kill_during_checkpoint_write_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    # Saves per epoch: last.pth, then model_best.pth if the accuracy improved. The 3rd save is
    # epoch 1's last.pth (epoch 0 saved last + best): die half-way through writing it.
    killed = subprocess.run([sys.executable, "-m", "kat.cli.train", *QUICK, "--output", str(out)],
                            env=_env("save:3"), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = list(out.glob(".last.pth.tmp-*"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the interrupted write, under a temp name
    ck = load_checkpoint_file(out / "last.pth")  # "latest" is intact: epoch 0's checkpoint
    assert ck["epoch"] == 0
    # Resuming from it loses only the epoch in progress, and cleans up the partial file.
    assert train.main(QUICK + ["--output", str(out), "--resume", str(out / "last.pth")]) == 0
    assert load_checkpoint_file(out / "last.pth")["epoch"] == 2 and _result(out)["steps"] > 0
    assert not list(out.glob(".*.tmp-*"))


def test_dying_rank_stops_every_rank(tmp_path):
    """Rank 1 is SIGKILLed after its 2nd step: torchrun must exit non-zero, rank 0 must not hang."""
    env = _env("rank:1:2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "kat.cli.train", "--device", "cpu", "--output", str(tmp_path / "out"), *TINY,
           "--epochs", "2", "--batch-size", "8", "--dist-timeout", "60"]
    t0 = time.time()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.time() - t0
    assert run.returncode != 0
    assert elapsed < 120, f"took {elapsed:.0f} s to stop"
    assert "rank 1 of 2 finished" not in run.stderr and "rank 0 of 2 finished" not in run.stderr
    assert "Signals.SIGKILL" in run.stderr or "exitcode  : -9" in run.stderr  # torchrun names the dead worker
    assert not (tmp_path / "out" / "result.json").exists()


# --- bad-input table: the tools' rows ------------------------------------------------------------

def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"unknown model 'kat_huge_patch16_224'; KAT models: \['kat_base_gelu_patch16_224', 'kat_base_patch16_224'"):
        create_model("kat_huge_patch16_224", None, {})
    with pytest.raises(ValueError, match=r"unknown model 'kat_huge_patch16_224'"):
        train.main(["--model", "kat_huge_patch16_224", "--epochs", "1", "--max-steps", "1"])


def test_images_of_the_wrong_size(tmp_path):
    import timm
    model = timm.create_model("kat_tiny_patch16_224")
    with pytest.raises(AssertionError, match=r"Input height \(32\) doesn't match model \(224\)"):
        model(torch.randn(1, 3, 32, 32))
    # kat-validate: weights trained on 8x8 digits, asked to evaluate 28x28 Fashion-MNIST
    out = tmp_path / "digits"
    assert train.main(TINY + ["--epochs", "1", "--max-steps", "1", "--output", str(out)]) == 0
    fm = tmp_path / "fm"
    _tiny_fashion_mnist(fm)
    with pytest.raises(ValueError, match=r"images are 28x28 but the model takes 8x8 \(a fixed input size\)"):
        validate.main(["--checkpoint", str(out / "last.pth"), "--dataset", "fashion-mnist", "--data-dir", str(fm)])


def _tiny_fashion_mnist(root):
    """Four idx files holding 4 random 28x28 images per split (the format's real layout)."""
    import gzip
    import struct
    root.mkdir()
    for split in ("train", "t10k"):
        with gzip.open(root / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 4, 28, 28) + bytes(range(256)) * 12 + bytes(4 * 784 - 3072))
        with gzip.open(root / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 4) + bytes([0, 1, 2, 3]))


def test_digits_model_defaults_apply_to_digits_only(tmp_path):
    """The small digits model is the default for --dataset digits only; other datasets get the named
    model as timm defines it (a 224x224 KAT-S on synthetic data is not silently shrunk)."""
    out = tmp_path / "syn"
    assert train.main(["--dataset", "synthetic", "--model", "kat_small_patch16_224", "--model-kwargs",
                       "{img_size: 32, patch_size: 8}", "--synthetic-size", "16", "--batch-size", "8",
                       "--max-steps", "1", "--epochs", "1", "--output", str(out)]) == 0
    import timm
    expected = timm.create_model("kat_small_patch16_224", img_size=32, patch_size=8)  # KAT-S width and depth
    assert _result(out)["parameters"] == sum(p.numel() for p in expected.parameters()) > 20_000_000
    assert load_checkpoint_file(out / "last.pth")["args"]["model_kwargs"] == {"img_size": 32, "patch_size": 8}
    digits = tmp_path / "digits"
    assert train.main(["--max-steps", "1", "--epochs", "1", "--output", str(digits)]) == 0
    assert load_checkpoint_file(digits / "last.pth")["args"]["model_kwargs"]["embed_dim"] == 64
