"""kat-train / kat-validate / kat-predict end to end on the embedded digits set and tiny folders (CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kat.cli import predict, train, validate
from kat.cli.common import load_checkpoint_file

FAST = ["--epochs", "15", "--no-augment", "--drop-path", "0", "--warmup-epochs", "1", "--smoothing", "0",
        "--log-interval", "1000"]
TINY = ["--model-kwargs", "{patch_size: 2, embed_dim: 32, depth: 2, num_heads: 2}", "--log-interval", "1"]


def _env(fault: str = ""):
    """A child process's environment; ``fault``: a KAT_TEST_FAULT spec (tests/cli/faults)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    if fault:
        env["KAT_TEST_FAULT"] = fault
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "faults"), env.get("PYTHONPATH", "")])
    return env


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One short digits training shared by the tests below (about 30 s on 2 CPU cores)."""
    out = tmp_path_factory.mktemp("digits")
    assert train.main(FAST + ["--output", str(out)]) == 0
    return out


def test_short_digits_schedule_learns(digits_run):
    res = _result(digits_run)
    assert res["test_top1"] >= 80.0  # a learned model; the full default reaches ~97%
    for name in ("last.pth", "model_best.pth", "summary.csv", "config.yaml"):
        assert (digits_run / name).is_file()
    lines = (digits_run / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,eval_loss,eval_top1") and len(lines) == 16
    # no log step (--log-interval 1000), so no steady rate (it starts at the epoch's first log step)
    assert 0 < res["last_epoch_img_per_s"] and res["steady_img_per_s"] is None
    # the epoch's mean train loss is summed on the device, not read back every step
    assert 0 < float(lines[-1].split(",")[1]) < float(lines[1].split(",")[1])


def test_validate_reproduces_train_accuracy(digits_run, tmp_path, capsys):
    out_json = tmp_path / "val.json"
    assert validate.main(["--checkpoint", str(digits_run / "last.pth"), "--json", str(out_json)]) == 0
    val = json.loads(out_json.read_text())
    assert val["top1"] == pytest.approx(_result(digits_run)["test_top1"], abs=1e-9)
    assert val["images"] == 359 and val["dataset"] == "digits"


def test_predict_prints_class_names(digits_run, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits
    data = load_digits()
    ck = load_checkpoint_file(digits_run / "last.pth")
    assert ck["dataset"]["class_names"] == [str(i) for i in range(10)]
    hits = 0
    for i in range(20):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((data.images[i] * 255 / 16).astype(np.uint8)).save(path)
        assert predict.main(["--checkpoint", str(digits_run / "last.pth"), str(path), "--topk", "3", "--json"]) == 0
        top = json.loads(capsys.readouterr().out)[0]["top"]
        assert len(top) == 3 and all(t["class"] in "0123456789" for t in top)
        hits += top[0]["class"] == str(data.target[i])
    assert hits >= 14  # the model above is >= 80% accurate


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    args = FAST[2:] + TINY + ["--epochs", "3", "--max-steps", "1000", "--model-ema", "--model-ema-decay", "0.9"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([sys.executable, "-m", "kat.cli.train", *args, "--output", str(full)], check=True,
                   env=_env(), capture_output=True)
    killed = subprocess.run([sys.executable, "-m", "kat.cli.train", *args, "--output", str(cut)],
                            env=_env("epoch:1"), capture_output=True)
    assert killed.returncode == -9  # SIGKILL, not a clean exit
    assert load_checkpoint_file(cut / "last.pth")["epoch"] == 1
    resumed = subprocess.run([sys.executable, "-m", "kat.cli.train", *args, "--output", str(cut),
                              "--resume", str(cut / "last.pth")], env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing at epoch 2" in resumed.stderr
    a, b = load_checkpoint_file(full / "last.pth"), load_checkpoint_file(cut / "last.pth")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("state_dict", "state_dict_ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert a["scheduler"] == b["scheduler"]


def _torchrun(nproc, out, extra, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "kat.cli.train", "--device", "cpu", "--output", str(out), *extra]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_torchrun_two_processes_match_one_process_first_step(tmp_path):
    common = TINY + ["--no-shuffle", "--no-augment", "--drop-path", "0", "--smoothing", "0", "--max-steps", "3",
                     "--epochs", "1"]
    one = _torchrun(1, tmp_path / "one", common + ["--batch-size", "16"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(2, tmp_path / "two", common + ["--batch-size", "8"])
    assert two.returncode == 0, two.stderr[-2000:]
    # both ranks ran and finished; per-step lines come from rank 0 only; rank 0 wrote the checkpoint
    for r in (0, 1):
        assert f"[rank {r}] rank {r} of 2 finished after 3 steps" in two.stderr
    assert "[rank 1] epoch" not in two.stderr
    assert (tmp_path / "two" / "last.pth").is_file()
    r1, r2 = _result(tmp_path / "one"), _result(tmp_path / "two")
    assert r2["first_loss"] == pytest.approx(r1["first_loss"], rel=1e-5)  # same global batch of 16
    # DDP's tuning switches change how gradients are all-reduced, not what they are
    tuned = _torchrun(2, tmp_path / "tuned", common + ["--batch-size", "8", "--ddp-static-graph",
                                                      "--ddp-bucket-mb", "1"])
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    sd2 = load_checkpoint_file(tmp_path / "two" / "last.pth")["state_dict"]
    sd3 = load_checkpoint_file(tmp_path / "tuned" / "last.pth")["state_dict"]
    assert all(torch.allclose(sd2[k], sd3[k], rtol=1e-5, atol=1e-6) for k in sd2)
    # logged every step: the steady rate counts the 2 steps after the first log step, all ranks' images
    for r in (r1, r2):
        assert r["steady_img_per_s"] > 0


def test_torchrun_with_compile_matches_eager_first_step(tmp_path):
    """DDP over a torch.compile'd model (Dynamo splits the graph at DDP's buckets): two processes
    train, and the first step's loss is the eager DDP run's (the scaling measurement with GPU-bound
    steps, `--compile reduce-overhead` under torchrun, takes this path on the GPU)."""
    common = TINY + ["--no-shuffle", "--no-augment", "--drop-path", "0", "--smoothing", "0", "--max-steps", "2",
                     "--epochs", "1", "--batch-size", "8"]
    eager = _torchrun(2, tmp_path / "eager", common)
    assert eager.returncode == 0, eager.stderr[-2000:]
    compiled = _torchrun(2, tmp_path / "compiled", common + ["--compile"], timeout=420)
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    for r in (0, 1):
        assert f"[rank {r}] rank {r} of 2 finished after 2 steps" in compiled.stderr
    assert _result(tmp_path / "compiled")["first_loss"] == pytest.approx(
        _result(tmp_path / "eager")["first_loss"], rel=1e-5)


def test_synthetic_on_device_trains_like_the_host_pipeline(tmp_path):
    """--synthetic-on-device feeds the same batches without a host data pipeline: same step-1 loss
    and the same weights after three steps as the DataLoader path, shuffled."""
    common = ["--dataset", "synthetic", "--model", "kat_tiny_patch16_224", "--model-kwargs",
              "{img_size: 16, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "--synthetic-size", "48",
              "--batch-size", "8", "--max-steps", "3", "--epochs", "1", "--drop-path", "0", "--smoothing", "0",
              "--no-augment", "--workers", "0"]
    assert train.main(common + ["--output", str(tmp_path / "host")]) == 0
    assert train.main(common + ["--synthetic-on-device", "--output", str(tmp_path / "dev")]) == 0
    assert _result(tmp_path / "dev")["first_loss"] == _result(tmp_path / "host")["first_loss"]
    a = load_checkpoint_file(tmp_path / "host" / "last.pth")["state_dict"]
    b = load_checkpoint_file(tmp_path / "dev" / "last.pth")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_compile_trains_like_eager(tmp_path):
    """--compile runs the training forward through torch.compile (Inductor on the CPU here): the first
    step's loss matches eager, training finishes and the checkpoint has the plain module's keys."""
    common = TINY + ["--no-shuffle", "--no-augment", "--drop-path", "0", "--smoothing", "0", "--max-steps", "3",
                     "--epochs", "1", "--batch-size", "16"]
    assert train.main(common + ["--output", str(tmp_path / "eager")]) == 0
    assert train.main(common + ["--compile", "--output", str(tmp_path / "compiled")]) == 0
    eager, compiled = _result(tmp_path / "eager"), _result(tmp_path / "compiled")
    assert compiled["steps"] == 3
    assert compiled["first_loss"] == pytest.approx(eager["first_loss"], rel=1e-4)
    keys = set(load_checkpoint_file(tmp_path / "compiled" / "last.pth")["state_dict"])
    assert keys == set(load_checkpoint_file(tmp_path / "eager" / "last.pth")["state_dict"])
    assert not any(k.startswith("_orig_mod") for k in keys)


def _image_folder(root: Path, corrupt: bool = False):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (root / "val" / "dog" / "broken.png").write_bytes(b"not a png at all")
    return root


def test_torchrun_on_folder_dataset(tmp_path):
    data = _image_folder(tmp_path / "data")
    run = _torchrun(2, tmp_path / "out", ["--data-dir", str(data), "--dataset", "folder", "--model",
                                           "kat_tiny_patch16_224", "--model-kwargs",
                                           "{img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
                                           "--batch-size", "4", "--epochs", "1", "--log-interval", "1"])
    assert run.returncode == 0, run.stderr[-2000:]
    for r in (0, 1):  # 12 train images, 4 per rank per step: 1 full step each (drop_last)
        assert f"[rank {r}] rank {r} of 2 finished after 1 steps" in run.stderr
    assert (tmp_path / "out" / "last.pth").is_file() and not list((tmp_path / "out").glob(".*tmp*"))
    ck = load_checkpoint_file(tmp_path / "out" / "last.pth")
    assert ck["dataset"]["class_names"] == ["cat", "dog"] and ck["metrics"]["images"] == 12


def test_prefetcher_feeds_the_same_images(tmp_path):
    """--prefetcher on (uint8 from the workers, normalised on the device by timm's PrefetchLoader)
    trains on the same images as float batches from the workers: same step-1 loss and weights."""
    data = _image_folder(tmp_path / "data")
    args = ["--dataset", str(data), "--model-kwargs", "{img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, "
            "num_heads: 2}", "--batch-size", "4", "--max-steps", "2", "--epochs", "1", "--workers", "0",
            "--drop-path", "0"]
    assert train.main(args + ["--prefetcher", "off", "--output", str(tmp_path / "off")]) == 0
    assert train.main(args + ["--prefetcher", "on", "--output", str(tmp_path / "on")]) == 0
    off, on = _result(tmp_path / "off"), _result(tmp_path / "on")
    assert on["first_loss"] == pytest.approx(off["first_loss"], rel=1e-5)  # (x/255-m)/s vs (x-255m)/(255s)
    a = load_checkpoint_file(tmp_path / "off" / "last.pth")["state_dict"]
    b = load_checkpoint_file(tmp_path / "on" / "last.pth")["state_dict"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    data = _image_folder(tmp_path / "data", corrupt=True)
    base = ["--dataset", str(data), "--model", "kat_tiny_patch16_224", "--model-kwargs",
            "{img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "--batch-size", "4"]
    with pytest.raises(RuntimeError, match=r"cannot read image .*broken\.png"):
        validate.main(base)
    out = tmp_path / "v.json"
    assert validate.main(base + ["--skip-corrupt", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 12 and res["skipped_images"][0].endswith("broken.png")  # out of the denominator


def test_unknown_config_key_and_missing_dataset(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        train.main(["-c", str(cfg)])
    assert "config " + str(cfg) + ": unknown option(s) ['learning_rate']" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="dataset folder not found: '/nonexistent/data'"):
        validate.main(["--model", "kat_tiny_patch16_224", "--dataset", "/nonexistent/data"])


def test_plot_cli_from_a_training_checkpoint(digits_run, tmp_path):
    from kat.cli import plot
    out = tmp_path / "r.png"
    assert plot.main(["rationals", "--checkpoint", str(digits_run / "last.pth"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    curves = tmp_path / "c.png"
    assert plot.main(["curves", str(digits_run / "summary.csv"), "--out", str(curves)]) == 0
    assert curves.stat().st_size > 5_000


def test_corrupt_image_in_training_is_named(tmp_path):
    data = _image_folder(tmp_path / "data")
    (data / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG truncated")
    args = ["--dataset", str(data), "--model-kwargs", "{img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, "
            "num_heads: 2}", "--batch-size", "13", "--epochs", "1", "--output", str(tmp_path / "o")]
    with pytest.raises(RuntimeError, match=r"cannot read image .*broken\.png"):
        train.main(args)
    assert train.main(args + ["--skip-corrupt"]) == 0


def test_fashion_mnist_idx_reader(tmp_path):
    import gzip
    import struct

    from kat.data import embedded_dataset
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        with gzip.open(tmp_path / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + imgs.tobytes())
        with open(tmp_path / f"{split}-labels-idx1-ubyte", "wb") as f:  # uncompressed works too
            f.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())
        if split == "train":
            first = imgs[0]
    tr, te, info = embedded_dataset("fashion-mnist", str(tmp_path), augment=False)
    assert len(tr) == 12 and len(te) == 5 and info.input_size == (1, 28, 28) and info.class_names[9] == "Ankle boot"
    x, y = tr[0]
    assert y.item() == 0
    assert torch.allclose(x * info.std[0] + info.mean[0], torch.from_numpy(first).float()[None] / 255, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        embedded_dataset("fashion-mnist", str(tmp_path / "nowhere"))


def test_train_from_vit_weights(tmp_path):
    import timm
    vit = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=2, in_chans=1, num_classes=10,
                            embed_dim=32, depth=2, num_heads=2)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    out = tmp_path / "o"
    assert train.main(["--from-vit", str(tmp_path / "vit.pth"), "--model-kwargs", "{num_heads: 2}",
                       "--max-steps", "2", "--epochs", "1", "--output", str(out)]) == 0
    sd = load_checkpoint_file(out / "last.pth")["state_dict"]
    assert "blocks.1.mlp.act2.weight_numerator" in sd and sd["blocks.0.mlp.fc1.weight"].shape == (128, 32)


def test_nonfinite_loss_stops_or_skips(tmp_path):
    args = TINY + ["--lr", "1e30", "--warmup-epochs", "0", "--epochs", "2", "--max-steps", "30",
                   "--output", str(tmp_path / "o")]
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d+"):
        train.main(args)
    assert train.main(args + ["--skip-nonfinite"]) == 0
    assert _result(tmp_path / "o")["skipped_steps"] > 0


@pytest.mark.parametrize("config", sorted(str(p) for p in (Path(__file__).parents[2] / "configs").glob("*.yaml")))
def test_shipped_recipes_parse(config):
    from kat.cli.common import parse_with_config
    args = parse_with_config(train.build_parser(), ["-c", config])
    assert args.model.split("_")[0] in ("kat", "vit") and args.epochs > 0
    if "in1k" in config:  # the paper's recipe (arXiv 2409.10594, appendix)
        assert (args.epochs, args.batch_size, args.lr, args.lr_base_batch, args.weight_decay) == (300, 128, 1e-3, 1024, 0.05)
        assert (args.mixup, args.cutmix, args.reprob, args.smoothing, args.aa) == (0.8, 1.0, 0.25, 0.1, "rand-m9-mstd0.5")
        assert args.model_ema and args.model_ema_decay == 0.9999 and args.warmup_epochs == 5
        assert args.drop_path == (0.4 if "base" in config else 0.1)
        assert args.model_kwargs == {"attn_init": "mimetic"}  # the official init the released models had


def test_fused_optimizer_choice_and_resume_across_it():
    """--fused-opt auto asks timm for PyTorch's fused Adam/AdamW on CUDA only; the optimizer state is
    the same either way, so a checkpoint written with one resumes with the other."""
    from timm.optim import create_optimizer_v2

    from kat.cli.train import optimizer_kwargs
    assert optimizer_kwargs("adamw", "cuda", "auto") == {"fused": True}
    assert optimizer_kwargs("AdamW", "cuda", "auto") == {"fused": True}
    assert optimizer_kwargs("adamw", "cuda", "off") == {}
    assert optimizer_kwargs("adamw", "cpu", "auto") == {}
    assert optimizer_kwargs("sgd", "cuda", "auto") == {}
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    fused = create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.05, fused=True)
    assert fused.defaults["fused"] is True
    model(torch.randn(3, 8)).square().mean().backward()
    fused.step()
    plain = create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.05)
    plain.load_state_dict(fused.state_dict())
    for p in model.parameters():
        assert torch.equal(plain.state[p]["exp_avg"], fused.state[p]["exp_avg"])


def test_image_folder_cpu_config(tmp_path):
    """The README's "Train on your own images" command, shortened (2 epochs), then kat-validate from
    the checkpoint alone."""
    data = _image_folder(tmp_path / "my_images")
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[2]
    assert train.cli(["-c", str(root / "configs" / "image_folder_cpu.yaml"), "--data-dir", str(data),
                      "--epochs", "2", "--batch-size", "4", "--workers", "0", "--output", str(out)]) == 0
    ck = load_checkpoint_file(out / "last.pth")
    assert ck["args"]["amp"] == "auto" and ck["dataset"]["input_size"] == [3, 32, 32]
    assert ck["epoch"] == 1 and _result(out)["steps"] == 6  # 12 images, batch 4, 2 epochs
    res = tmp_path / "v.json"
    assert validate.cli(["--checkpoint", str(out / "model_best.pth"), "--json", str(res)]) == 0
    assert json.loads(res.read_text())["images"] == 12
