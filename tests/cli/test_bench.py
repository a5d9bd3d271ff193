"""kat-bench model's own logic, run on the CPU with small inputs (the numbers mean nothing here; on
a GPU the same code times CUDA-event loops): both models of a pair measured, eager timing loops
interleaved ViT/KAT (compiled models too), ratios as medians of per-repeat pairs."""
import json
import statistics

import pytest
import torch

from kat.cli import bench

ARGS = ["model", "--device", "cpu", "--sizes", "tiny", "--batch", "2", "--infer-batch", "2", "--iters", "1",
        "--warmup", "1", "--repeats", "3", "--img-size", "32"]


def _run(tmp_path, extra=()):
    out = tmp_path / "bench.json"
    assert bench.main([*ARGS, *extra, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    return row


def test_eager_pair_is_interleaved_and_ratios_are_paired_medians(tmp_path, monkeypatch):
    order = []
    real = bench._ModelRun.time

    def spy(self, phase, iters, warmup):
        order.append((phase, self.name.split("_")[0]))
        real(self, phase, iters, warmup)

    monkeypatch.setattr(bench._ModelRun, "time", spy)
    row = _run(tmp_path)
    assert order == [("train", "vit"), ("train", "kat")] * 3 + [("infer", "vit"), ("infer", "kat")] * 3
    assert row["vit"]["model"] == "vit_tiny_patch16_224"
    for phase in ("train", "infer"):
        kat_runs, vit_runs = row["kat"][f"{phase}_img_s_runs"], row["vit"][f"{phase}_img_s_runs"]
        assert len(kat_runs) == len(vit_runs) == 3 and min(kat_runs + vit_runs) > 0
        paired = [k / v for k, v in zip(kat_runs, vit_runs)]
        assert row[f"{phase}_ratio_runs"] == pytest.approx(paired)
        assert row[f"{phase}_ratio"] == pytest.approx(statistics.median(paired))
        assert row["kat"][f"{phase}_img_s"] == pytest.approx(2 / statistics.median([2 / r for r in kat_runs]))
    assert row["mem_ratio"] is None and row["kat"]["peak_train_mem_gib"] is None  # no memory counter on the CPU


def test_compiled_pair_is_interleaved_and_both_models_run_their_graphs(tmp_path, monkeypatch):
    """Both models compiled and resident at once: each timed loop runs compiled graphs (none falls
    back to eager at Dynamo's recompile limit). Dynamo's eager backend stands in for Inductor."""
    calls, order, modes = [0], [], []
    real_compile = torch.compile

    def backend(gm, example_inputs):
        def run(*args):
            calls[0] += 1
            return gm(*args)
        return run

    def fake_compile(model, mode=None, dynamic=None):
        modes.append(mode)
        return real_compile(model, backend=backend, dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", fake_compile)
    real = bench._ModelRun.time

    def spy(self, phase, iters, warmup):
        before = calls[0]
        real(self, phase, iters, warmup)
        order.append((phase, self.name[:3], calls[0] > before))

    monkeypatch.setattr(bench._ModelRun, "time", spy)
    row = _run(tmp_path, ["--compile"])
    assert modes == ["default"] * 2
    assert order == [("train", "vit", True), ("train", "kat", True)] * 3 + [("infer", "vit", True),
                                                                            ("infer", "kat", True)] * 3
    assert len(row["train_ratio_runs"]) == len(row["infer_ratio_runs"]) == 3


def test_profile_reports_host_time_per_step_after_the_timing_loops(tmp_path, monkeypatch):
    """--profile: per model and phase the median host time of ``iters`` single steps (here, off CUDA,
    a step's wall time; no GPU operation counter), measured after both models' timing loops."""
    order = []
    real_time, real_profile = bench._ModelRun.time, bench._ModelRun.profile
    monkeypatch.setattr(bench._ModelRun, "time", lambda self, phase, iters, warmup: order.append(
        ("time", phase)) or real_time(self, phase, iters, warmup))
    monkeypatch.setattr(bench._ModelRun, "profile", lambda self, phase, iters: order.append(
        ("profile", phase, self.name[:3])) or real_profile(self, phase, iters))
    row = _run(tmp_path, ["--profile"])
    assert order == ([("time", "train")] * 6 + [("profile", "train", "vit"), ("profile", "train", "kat")]
                     + [("time", "infer")] * 6 + [("profile", "infer", "vit"), ("profile", "infer", "kat")])
    for model in ("vit", "kat"):
        prof = row[model]["profile"]
        assert set(prof) == {"train", "infer"}
        for phase, p in prof.items():
            assert p["gpu_ops"] is None and p["gpu_ms"] is None
            # one step's wall time: the same order as the timed loop's seconds per step
            per_step = 2 / row[model][f"{phase}_img_s"]
            assert 0.1 * per_step < p["host_ms"] / 1e3 < 10 * per_step


def test_model_mode_needs_a_gpu_unless_cpu_is_asked_for(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main(["model", "--sizes", "tiny"])
