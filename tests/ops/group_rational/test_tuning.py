"""Kernel configs: the candidates per group size, what a config means for the kernels, and the
tuner: fastest candidate per shape, remembered in the tuning file so a later process reuses the
same choice (same configs, hence the same summation order and bits) without timing again. GPU
timing is replaced by a stand-in clock; the device is only named."""
import json

import pytest
import torch

from kat.ops.group_rational import tuning

CONFIGS = [(8, 64, 4, False), (4, 128, 4, False), (16, 64, 4, True)]
KEY = ("bwd", torch.device("cuda", 0), torch.bfloat16, 25216, 768, 768, 8)


class Clock:
    """Stand-in for do_bench: a fixed time per config; records what it was asked to time."""

    def __init__(self, times):
        self.times, self.calls = times, []

    def __call__(self, launch, cfg):
        self.calls.append(cfg)
        t = self.times[cfg]
        if t is None:
            raise RuntimeError("out of resources")  # as a config the GPU cannot run
        return t


def _tuner(tmp_path, times, **kw):
    clock = Clock(times)
    kw.setdefault("path", lambda: tmp_path / "tuning.json")
    kw.setdefault("autotune", lambda: True)  # the tests' environment turns timing off (conftest)
    return tuning.Tuner(time_config=clock, gpu_name=lambda index: "NVIDIA H200", **kw), clock


def test_picks_the_fastest_and_a_later_process_reuses_it_without_timing(tmp_path):
    first, clock = _tuner(tmp_path, {CONFIGS[0]: 3.0, CONFIGS[1]: 1.0, CONFIGS[2]: 2.0})
    assert first.pick(KEY, CONFIGS, launch=None) == CONFIGS[1]
    assert clock.calls == CONFIGS
    assert first.pick(KEY, CONFIGS, launch=None) == CONFIGS[1] and len(clock.calls) == 3  # from the file
    stored = json.loads((tmp_path / "tuning.json").read_text())
    (name, cfg), = stored.items()
    assert cfg == list(CONFIGS[1]) and "NVIDIA H200" in name and "bwd" in name and "25216,768,768,8" in name
    # a new process (new tuner) whose clock would now favour another config still takes the stored one
    second, clock2 = _tuner(tmp_path, {CONFIGS[0]: 0.5, CONFIGS[1]: 1.0, CONFIGS[2]: 2.0})
    assert second.pick(KEY, CONFIGS, launch=None) == CONFIGS[1]
    assert clock2.calls == []


def test_other_shapes_and_gpus_are_tuned_separately(tmp_path):
    first, _ = _tuner(tmp_path, {CONFIGS[0]: 1.0, CONFIGS[1]: 2.0, CONFIGS[2]: 3.0})
    first.pick(KEY, CONFIGS, launch=None)
    other_shape = KEY[:3] + (25216, 192, 192, 8)
    second, clock = _tuner(tmp_path, {CONFIGS[0]: 3.0, CONFIGS[1]: 2.0, CONFIGS[2]: 1.0})
    assert second.pick(other_shape, CONFIGS, launch=None) == CONFIGS[2] and len(clock.calls) == 3
    third = tuning.Tuner(time_config=Clock({c: 1.0 for c in CONFIGS}), gpu_name=lambda i: "NVIDIA H100",
                         path=lambda: tmp_path / "tuning.json", autotune=lambda: True)
    third.pick(KEY, CONFIGS, launch=None)
    assert len(json.loads((tmp_path / "tuning.json").read_text())) == 3  # entries merged, none lost


@pytest.mark.parametrize("content", ["{not json", '["a list"]', None])
def test_unusable_entries_are_retuned(tmp_path, content):
    path = tmp_path / "tuning.json"
    if content is None:  # a stored config the kernels no longer offer
        first, _ = _tuner(tmp_path, {c: 1.0 for c in CONFIGS})
        first.pick(KEY, CONFIGS, launch=None)
        data = json.loads(path.read_text())
        data = {k: [99, 99, 1, False] for k in data}
        path.write_text(json.dumps(data))
    else:
        path.write_text(content)
    tuner, clock = _tuner(tmp_path, {CONFIGS[0]: 2.0, CONFIGS[1]: 3.0, CONFIGS[2]: 1.0})
    assert tuner.pick(KEY, CONFIGS, launch=None) == CONFIGS[2]
    assert clock.calls == CONFIGS
    assert list(json.loads(path.read_text()).values()) == [list(CONFIGS[2])]


def test_configs_that_fail_are_skipped_and_none_running_is_an_error(tmp_path):
    tuner, _ = _tuner(tmp_path, {CONFIGS[0]: None, CONFIGS[1]: 5.0, CONFIGS[2]: None})
    assert tuner.pick(KEY, CONFIGS, launch=None) == CONFIGS[1]
    tuner, _ = _tuner(tmp_path, {c: None for c in CONFIGS})
    with pytest.raises(RuntimeError, match="no kernel config runs"):
        tuner.pick(KEY[:3] + (1, 2, 3, 4), CONFIGS, launch=None)


def test_without_a_file_or_without_autotuning(tmp_path):
    tuner, clock = _tuner(tmp_path, {CONFIGS[0]: 2.0, CONFIGS[1]: 1.0, CONFIGS[2]: 3.0}, path=lambda: None)
    assert tuner.pick(KEY, CONFIGS, launch=None) == CONFIGS[1] and len(clock.calls) == 3
    assert list(tmp_path.iterdir()) == []
    tuner, clock = _tuner(tmp_path, {c: 1.0 for c in CONFIGS}, autotune=lambda: False)
    assert tuner.pick(KEY, CONFIGS, launch=None) == CONFIGS[0] and clock.calls == []
    cpu_key = ("fwd", torch.device("cpu"), torch.float32, 10, 64, 64, 8)
    assert tuner.pick(cpu_key, CONFIGS, launch=None) == CONFIGS[0]  # the interpreter: never timed


def test_cache_path_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("KAT_TUNE_CACHE", raising=False)
    assert tuning.cache_path().parts[-3:] == (".cache", "kat", "tuning.json")
    monkeypatch.setenv("KAT_TUNE_CACHE", "0")
    assert tuning.cache_path() is None
    monkeypatch.setenv("KAT_TUNE_CACHE", str(tmp_path / "t.json"))
    assert tuning.cache_path() == tmp_path / "t.json"


def test_unwritable_location_still_tunes(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache's folder would have to be
    tuner, clock = _tuner(tmp_path, {CONFIGS[0]: 2.0, CONFIGS[1]: 1.0, CONFIGS[2]: 3.0},
                          path=lambda: blocker / "sub" / "tuning.json")
    assert tuner.pick(KEY, CONFIGS, launch=None) == CONFIGS[1]


def test_first_use_inside_a_cuda_graph_capture_takes_the_first_config_untimed(tmp_path, monkeypatch):
    """Nothing can be timed inside a capture: a stored choice is still used, else the first config,
    remembered for the process but not written to the file (a later process tunes the shape)."""
    monkeypatch.setattr(tuning, "_capturing", lambda: True)
    tuner, clock = _tuner(tmp_path, {CONFIGS[0]: 3.0, CONFIGS[1]: 1.0, CONFIGS[2]: 2.0})
    assert tuner.pick(KEY, CONFIGS, launch=None) == CONFIGS[0]
    assert clock.calls == [] and not (tmp_path / "tuning.json").exists()
    monkeypatch.setattr(tuning, "_capturing", lambda: False)
    timed, _ = _tuner(tmp_path, {CONFIGS[0]: 3.0, CONFIGS[1]: 1.0, CONFIGS[2]: 2.0})
    assert timed.pick(KEY, CONFIGS, launch=None) == CONFIGS[1]  # outside a capture: timed and stored
    monkeypatch.setattr(tuning, "_capturing", lambda: True)
    stored, clock = _tuner(tmp_path, {c: 1.0 for c in CONFIGS})
    assert stored.pick(KEY, CONFIGS, launch=None) == CONFIGS[1] and clock.calls == []  # read, not timed


def test_autotune_switch_from_the_environment(monkeypatch):
    monkeypatch.setenv("KAT_AUTOTUNE", "0")
    assert not tuning.autotune_enabled()
    monkeypatch.setenv("KAT_AUTOTUNE", "1")
    assert tuning.autotune_enabled()


def test_fold_configs_are_candidates_only_where_they_fold():
    """A config asking to fold is a candidate only at group sizes its block width divides (else it
    would repeat its unfolded twin and cost tuning time); C = 768 (96 a group) has some."""
    cuda = torch.device("cuda", 0)
    fold_cfgs = [cfg for cfg in tuning.GPU_BWD_CONFIGS if len(cfg) > 5 and cfg[5] > 1]
    assert fold_cfgs
    for gs in (24, 48, 96, 384):
        candidates = tuning.bwd_candidates(cuda, gs)
        for cfg in fold_cfgs:
            assert (cfg in candidates) == (gs % cfg[1] == 0) == (tuning.fold(cfg, gs) > 1)
        assert all(cfg in candidates for cfg in tuning.GPU_BWD_CONFIGS if len(cfg) < 6)
    assert any(cfg in tuning.bwd_candidates(cuda, 96) for cfg in fold_cfgs)
    assert tuning.bwd_candidates(torch.device("cpu"), 96) == tuning.INTERPRETER_BWD_CONFIGS


def test_narrow_forward_configs_are_candidates_only_where_uniform():
    """Forward blocks narrower than 32 columns exist for group sizes no 32-wide block divides
    (24, 48): candidates only where their columns share one group."""
    cuda = torch.device("cuda", 0)
    narrow = [cfg for cfg in tuning.GPU_FWD_CONFIGS if cfg[1] < 32]
    assert narrow
    for gs in (24, 48, 96, 384):
        candidates = tuning.fwd_candidates(cuda, gs)
        assert all((cfg in candidates) == (gs % cfg[1] == 0) for cfg in narrow)
        assert all(cfg in candidates for cfg in tuning.GPU_FWD_CONFIGS if cfg[1] >= 32)
    assert any(cfg in tuning.fwd_candidates(cuda, 24) for cfg in narrow)
    assert any(cfg[1] == 16 for cfg in tuning.fwd_candidates(cuda, 48))
    for gs in (24, 48):  # and the backward has folding configs there
        assert any(tuning.fold(cfg, gs) > 1 for cfg in tuning.bwd_candidates(cuda, gs))


def test_kernel_constants_of_a_config():
    """Configs to constexprs, in the kernels' parameter order (direct launches pass them so)."""
    assert tuning.fwd_consts((16, 64, 4, True), 64, 100) == {
        "BLOCK_S": 16, "BLOCK_C": 64, "SELECT": True, "UNIFORM": True, "COLS_FIRST": True}
    assert not tuning.fwd_consts((16, 64, 4, False), 25, 100)["UNIFORM"]
    consts = tuning.bwd_consts((8, 32, 1, False, 3, 8), 96)
    assert consts == {"BLOCK_S": 8, "BLOCK_C": 32, "ROW_REDUCE": False, "ACC_ROWS": 8, "UNIFORM": True,
                      "STAGES": 3, "FOLD": 8}
    assert tuning.bwd_consts((8, 32, 1, False, 3, 8), 24)["FOLD"] == 1  # 32 does not divide 24: no fold
    assert tuning.bwd_consts((8, 64, 4, True), 64)["ACC_ROWS"] == 1


def test_forward_grid_order_rule():
    """Column blocks go on the forward grid's first axis while the row blocks fit the second axis's
    limit of 65535."""
    cfg = (8, 32, 2, False)
    for rows, first in ((1, True), (8 * 65535, True), (8 * 65535 + 1, False)):
        assert tuning.cols_first(rows, cfg) == first == tuning.fwd_consts(cfg, 96, rows)["COLS_FIRST"]
