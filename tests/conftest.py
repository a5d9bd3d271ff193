"""Test setup. Without a CUDA GPU, Triton kernels run on the CPU through Triton's interpreter.

TRITON_INTERPRET must be set before Triton is imported, so it is set here, before any test module
imports kat's kernels. On a machine with a GPU the real kernels run and the variable is left alone.
"""
import os
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("KAT_AUTOTUNE", "0")  # correctness tests need not time kernel configs
os.environ.setdefault("KAT_TUNE_CACHE", "0")  # and never write tuning choices into the home folder

# The golden data lives in shared/golden beside the checkout (or inside it, or in .data/golden where
# the device tool carries it); KAT_GOLDEN_DIR overrides.
_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = next((p for p in (Path(os.environ.get("KAT_GOLDEN_DIR", "/nonexistent")),
                           _ROOT.parent / "shared" / "golden", _ROOT / "shared" / "golden", _ROOT / ".data" / "golden")
            if p.is_dir()),
              _ROOT.parent / "shared" / "golden")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden data not found at {GOLDEN}; set up the checkout beside shared/")
    return GOLDEN


def pytest_terminal_summary(terminalreporter):
    """Report how many generated cases the hypothesis suite (tests/ops/group_rational/test_fuzz.py) ran."""
    import sys
    fuzz = sys.modules.get("tests.ops.group_rational.test_fuzz")
    if fuzz is not None and fuzz.FUZZ_STATS["cases"]:
        s = fuzz.FUZZ_STATS
        terminalreporter.write_line(
            f"hypothesis fuzz of group_rational: {s['cases']} cases (reference vs Triton), {s['with_specials']} "
            f"with NaN/Inf/huge inputs, {s['backward_checked']} with gradients checked, {s['mismatches']} mismatches")
