"""timm's own model tests on the kat_* models: ``tests/test_models.py`` from the source distribution
of the installed timm version, fetched from the package registry (``KAT_TIMM_SDIST`` names a local
copy on machines without one), run in a subprocess with ``timm_conftest.py``.

KAT is entered in the suite's lists the way timm lists its own ViTs: its models among the
non-standard-cfg ones (``NON_STD_FILTERS``, a ViT-like cfg with ``pool_size=None``) and its module among
those with ``forward_intermediates`` (``FEAT_INTER_FILTERS``).
"""
import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

HERE = Path(__file__).resolve().parent
# What must have run and passed for each model size, of the tests the fetched timm version defines
# (the prune contract came with timm 1.0.31); a release that stops selecting KAT for one of these fails
# here instead of passing silently.
MUST_PASS = {"test_model_forward", "test_model_backward", "test_model_default_cfgs_non_std",
             "test_model_forward_intermediates", "test_model_forward_intermediates_features",
             "test_prune_intermediate_layers_contract", "test_model_forward_fx", "test_model_backward_fx"}
ALLOWED_SKIPS = ("network:", "TorchScript:")


@pytest.fixture(scope="module")
def timm_tests(tmp_path_factory) -> Path:
    version = timm.__version__
    root = tmp_path_factory.mktemp("timm_suite")
    sdist = os.environ.get("KAT_TIMM_SDIST")
    if not sdist:
        r = subprocess.run([sys.executable, "-m", "pip", "download", f"timm=={version}", "--no-deps",
                            "--no-binary", ":all:", "--quiet", "-d", str(root)],
                           capture_output=True, text=True, timeout=600)
        found = sorted(root.glob("timm-*.tar.gz"))
        if r.returncode != 0 or not found:
            why = f"could not fetch timm {version}'s source distribution: {r.stderr.strip()[-300:]}"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        sdist = found[0]
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/tests/test_models.py"))
        source = tar.extractfile(member).read().decode()
    for name, entry in (("NON_STD_FILTERS", "'kat_*'"), ("FEAT_INTER_FILTERS", "'kat'")):
        head = f"{name} = ["
        assert source.count(head) == 1, f"timm {version}'s test_models.py has no single '{head}'"
        source = source.replace(head, f"{head}{entry}, ")
    (root / "test_models.py").write_text(source)
    (root / "conftest.py").write_text((HERE / "timm_conftest.py").read_text())
    return root


def _run(root: Path, select: str, env=None) -> dict:
    report = root / f"report-{select.replace(' ', '_')}.xml"
    cmd = [sys.executable, "-m", "pytest", "test_models.py", "-q", "-p", "no:cacheprovider", "-k", select,
           "-W", "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={report}"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert report.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    cases: dict = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = f"{tag}: {node.get('message', '')}"
        cases[case.get("name")] = outcome
    bad = {k: v for k, v in cases.items() if v.startswith(("failure", "error"))}
    assert r.returncode == 0 and not bad, f"{len(bad)} failed: {bad}\n{r.stdout[-4000:]}"
    return cases


def _check(root: Path, cases: dict, models: list[str]) -> None:
    source = (root / "test_models.py").read_text()
    must = {name for name in MUST_PASS if f"def {name}(" in source}
    assert {"test_model_forward", "test_model_forward_fx"} <= must, "timm's test_models.py changed its names"
    skips = {k: v for k, v in cases.items() if v.startswith("skipped")}
    assert all(v.split(": ", 1)[1].startswith(ALLOWED_SKIPS) for v in skips.values()), skips
    for model in models:
        ran = {k.split("[")[0] for k, v in cases.items()
               if v == "passed" and re.search(rf"[\[-]{re.escape(model)}[\].]", k)}
        assert must <= ran, f"{model}: not run or not passed: {sorted(must - ran)}"


@pytest.mark.slow
def test_timm_model_suite_tiny_small(timm_tests):
    cases = _run(timm_tests, "kat_tiny or kat_small")
    sizes = [f"kat_{s}{v}_patch16_224" for s in ("tiny", "small") for v in ("", "_swish", "_gelu")]
    _check(timm_tests, cases, sizes)


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="KAT-B's run is for a GPU machine")
def test_timm_model_suite_base(timm_tests):
    cases = _run(timm_tests, "kat_base", env={"TORCH_DEVICE": "cuda"})
    _check(timm_tests, cases, [f"kat_base{v}_patch16_224" for v in ("", "_swish", "_gelu")])
