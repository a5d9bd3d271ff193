"""The tools' console scripts on ordinary mistakes: one line on stderr naming the problem and the
fix, exit 2 for the arguments' fault and 1 for a failed run, no traceback unless --debug; and
unreadable images handled as documented (named, or skipped once each and reported)."""
import json
import subprocess
import sys

import pytest

from kat.cli import bench, plot, predict, train, validate
from tests.cli.test_train import _env, _image_folder, _result

SMALL = ["--model-kwargs", "img_size=32,patch_size=8,embed_dim=32,depth=1,num_heads=2", "--batch-size", "4"]
DIGITS_TINY = ["--model-kwargs", "{patch_size: 2, embed_dim: 16, depth: 1, num_heads: 2}", "--max-steps", "1",
               "--epochs", "1"]


def _error(capsys, prog: str) -> str:
    """The single error line the tool printed (and that there was exactly one, and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _exit_code(cli, args) -> int:
    """What the console script exits with (argparse's own errors leave through SystemExit)."""
    try:
        return cli(args)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert train.main(DIGITS_TINY + ["--output", str(out)]) == 0
    return out / "last.pth"


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--data-dir", "/nonexistent/images"], "--data-dir /nonexistent/images: no such folder"),
    (["--dataset", "/nonexistent/images"], "dataset folder not found: '/nonexistent/images'"),
    (["--dataset", "digits", "--data-dir", "."], "--data-dir does not apply to --dataset digits"),
    (["--model", "kat_huge_patch16_224"], "unknown model 'kat_huge_patch16_224'"),
    (["--model-kwargs", "img_size"], "--model-kwargs takes a mapping like"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--initial-checkpoint", "/nonexistent.pth"], "checkpoint not found: /nonexistent.pth"),
])
def test_train_usage_errors(args, message, capsys, tmp_path):
    assert _exit_code(train.cli, args + ["--output", str(tmp_path / "o")]) == 2
    assert message in _error(capsys, "kat-train")
    assert not (tmp_path / "o").exists()  # stopped before it made anything


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--epochs must be at least 1"):
        train.cli(["--epochs", "0", "--debug"])


def test_model_kwargs_as_key_value_pairs(tmp_path):
    out = tmp_path / "o"
    assert train.cli(["--model-kwargs", "patch_size=2, embed_dim=16, depth=1, num_heads=2", "--max-steps", "1",
                      "--epochs", "1", "--output", str(out)]) == 0
    assert _result(out)["parameters"] < 20_000


def test_data_dir_alone_is_that_folder(tmp_path):
    data = _image_folder(tmp_path / "mine")
    out = tmp_path / "o"
    assert train.cli(["--data-dir", str(data), *SMALL, "--max-steps", "1", "--epochs", "1", "--output", str(out)]) == 0
    from kat.cli.common import load_checkpoint_file
    ck = load_checkpoint_file(out / "last.pth")
    assert ck["dataset"]["name"] == "mine" and ck["dataset"]["class_names"] == ["cat", "dog"]
    assert ck["metrics"]["images"] == 12  # val/: 2 classes x 6
    # kat-validate --data-dir alone: that folder too (the checkpoint was trained on it)
    res = tmp_path / "v.json"
    assert validate.cli(["--checkpoint", str(out / "last.pth"), "--data-dir", str(data), "--json", str(res)]) == 0
    assert json.loads(res.read_text())["images"] == 12


def test_checkpoint_errors(digits_ckpt, tmp_path, capsys):
    png = tmp_path / "photo.png"
    _image_folder(tmp_path / "imgs")
    png.write_bytes((tmp_path / "imgs" / "val" / "cat" / "0.png").read_bytes())
    assert validate.cli(["--checkpoint", str(png)]) == 2
    line = _error(capsys, "kat-validate")
    assert "photo.png is not a checkpoint" in line and "weights_only=False" not in line
    assert validate.cli(["--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in _error(capsys, "kat-validate")
    # a grey (1-channel) digits checkpoint on an RGB image folder
    assert validate.cli(["--checkpoint", str(digits_ckpt), "--data-dir", str(tmp_path / "imgs")]) == 2
    assert "takes grey (1-channel) images (digits) but imgs has RGB (3-channel) images" in _error(capsys, "kat-validate")
    assert predict.cli(["--checkpoint", str(png), str(png)]) == 2
    assert "is not a checkpoint" in _error(capsys, "kat-predict")


def test_corrupt_training_image_stops_with_one_line(tmp_path):
    """In a loader worker process too (the error crosses the process boundary)."""
    data = _image_folder(tmp_path / "data")
    (data / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG truncated")
    run = subprocess.run([sys.executable, "-m", "kat.cli.train", "--data-dir", str(data), *SMALL, "--epochs", "1",
                          "--workers", "1", "--output", str(tmp_path / "o")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("kat-train: error: cannot read image ") and "broken.png" in last
    assert "pass --skip-corrupt" in last


def test_skip_corrupt_counts_each_file_once(tmp_path):
    data = _image_folder(tmp_path / "data", corrupt=True)  # val/dog/broken.png
    (data / "train" / "cat" / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "o"
    assert train.cli(["--data-dir", str(data), *SMALL, "--epochs", "3", "--skip-corrupt", "--output", str(out)]) == 0
    res = _result(out)
    assert [p.rsplit("/", 2)[-2:] for p in res["skipped_images"]] == [["cat", "bad.png"], ["dog", "broken.png"]]
    from kat.cli.common import load_checkpoint_file
    assert load_checkpoint_file(out / "last.pth")["metrics"]["images"] == 12  # 13 files, 12 readable
    v = tmp_path / "v.json"
    assert validate.cli(["--checkpoint", str(out / "last.pth"), "--skip-corrupt", "--json", str(v)]) == 0
    val = json.loads(v.read_text())
    assert val["images"] == 12 and len(val["skipped_images"]) == 1 and val["skipped_images"][0].endswith("broken.png")


def test_validate_without_skip_names_the_file(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", corrupt=True)
    assert validate.cli(["--model", "kat_tiny_patch16_224", "--data-dir", str(data), *SMALL]) == 1
    line = _error(capsys, "kat-validate")
    assert "broken.png" in line and "--skip-corrupt" in line


def test_predict_reports_bad_files_and_predicts_the_rest(digits_ckpt, tmp_path, capsys):
    from PIL import Image
    good = tmp_path / "good.png"
    Image.new("L", (8, 8), 128).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert predict.cli(["--checkpoint", str(digits_ckpt), str(bad), str(good), "--topk", "2"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: ") and out.count("\n") == 1
    assert f"kat-predict: cannot read image {bad}" in err and "1 of 2 image(s) could not be read" in err


def test_warmup_longer_than_run_warns(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="kat"):
        assert train.main(DIGITS_TINY + ["--output", str(tmp_path / "o")]) == 0
    assert any("the learning rate never reaches --lr" in r.getMessage() for r in caplog.records)


def test_bench_flops_builds_the_model_for_the_input_size(capsys):
    rows = bench.flops_rows(["kat_tiny_patch16_224"], False, (1, 28, 28), {"patch_size": 4, "embed_dim": 64,
                                                                             "num_heads": 2, "depth": 2})
    assert rows[0]["parameters"] < 1_000_000
    assert bench.cli(["flops", "--models", "kat_tiny_patch16_224", "--input-size", "1", "28", "28",
                      "--model-kwargs", "patch_size=4,depth=1"]) == 0
    assert bench.cli(["flops", "--models", "kat_tiny_patch16_224", "--input-size", "3", "28", "28"]) == 0
    assert bench.cli(["flops", "--models", "kat_huge_patch16_224"]) == 2
    assert "unknown model 'kat_huge_patch16_224'" in _error(capsys, "kat-bench")


def test_plot_titles_a_custom_model_by_its_shape(digits_ckpt, tmp_path):
    from kat.cli.common import checkpoint_model, load_checkpoint_file
    model = checkpoint_model(load_checkpoint_file(digits_ckpt))
    assert plot._describe(model, "kat_tiny_patch16_224") == "kat_tiny_patch16_224 (width 16, depth 1)"
    assert plot.cli(["rationals", "--checkpoint", str(digits_ckpt), "--out", str(tmp_path / "r.png")]) == 0


def test_missing_extras_are_named(monkeypatch, tmp_path):
    import builtins
    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install 'kat-transformer\[plot\]'"):
        plot.main(["curves", "x.csv", "--out", str(tmp_path / "c.png")])
    monkeypatch.setattr(builtins, "__import__", real)
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find(name, *a))
    import timm

    import kat
    with pytest.raises(ImportError, match=r"pip install 'kat-transformer\[onnx\]'"):
        kat.export_onnx(timm.create_model("kat_tiny_patch16_224", img_size=32, patch_size=8, depth=1), tmp_path / "m.onnx")


def test_checkpoint_of_another_size(digits_ckpt, capsys, tmp_path):
    assert validate.cli(["--checkpoint", str(digits_ckpt), "--model-kwargs", "{patch_size: 2, embed_dim: 32, "
                         "depth: 1, num_heads: 2}"]) == 2
    line = _error(capsys, "kat-validate")
    assert "does not fit this model: " in line and "(first: cls_token is (1, 1, 16) in the file, (1, 1, 32) in the model)" in line
    assert train.cli(["--initial-checkpoint", str(digits_ckpt), *DIGITS_TINY[2:], "--model-kwargs",
                      "{patch_size: 2, embed_dim: 16, depth: 2, num_heads: 2}", "--output", str(tmp_path)]) == 2
    line = _error(capsys, "kat-train")
    assert "last.pth does not fit this model: 16 missing (first: blocks.1.norm1.weight)" in line  # 16 per block


def test_options_that_cannot_apply_are_reported(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="kat"):
        assert train.main(DIGITS_TINY + ["--aa", "rand-m9-mstd0.5", "--reprob", "0.25", "--warmup-epochs", "0",
                                         "--output", str(tmp_path / "o")]) == 0
    assert [r.getMessage() for r in caplog.records if "no effect" in r.getMessage()] == [
        "--aa, --reprob: no effect with --dataset digits"]


def test_every_option_is_described():
    import argparse
    parsers = [train.build_parser(), validate.build_parser(), predict.build_parser(), plot.build_parser(),
               bench.build_parser()]
    for parser in list(parsers):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    for parser in parsers:
        undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
        assert not undocumented, f"{parser.prog}: {undocumented}"
        assert parser.description is None or parser.description.rstrip().endswith((".", ")")), parser.prog


def test_run_stopped_by_a_bad_file_resumes(tmp_path, monkeypatch, capsys):
    """A training image that turns unreadable after epoch 0: the run stops with its name (exit 1),
    epoch 0's checkpoint is there, and --resume finishes the run once the file is fixed."""
    data = _image_folder(tmp_path / "data")
    victim = data / "train" / "cat" / "0.png"
    good = victim.read_bytes()
    real_save = train.save_atomic

    def save_then_break(obj, path):
        victim.write_bytes(b"broken")
        return real_save(obj, path)
    monkeypatch.setattr(train, "save_atomic", save_then_break)
    out = tmp_path / "o"
    args = ["--data-dir", str(data), *SMALL, "--epochs", "3", "--output", str(out)]
    assert train.cli(args) == 1
    assert "cat/0.png" in _error(capsys, "kat-train")
    from kat.cli.common import load_checkpoint_file
    assert load_checkpoint_file(out / "last.pth")["epoch"] == 0
    monkeypatch.setattr(train, "save_atomic", real_save)
    victim.write_bytes(good)
    assert train.cli(args + ["--resume", str(out / "last.pth")]) == 0
    assert load_checkpoint_file(out / "last.pth")["epoch"] == 2
