"""conftest.py for timm's own ``tests/test_models.py`` run against the kat_* models (copied beside it
by ``test_timm_suite.py``; not collected here).

Importing kat registers the models. Tests that download weights or test images skip: they need
huggingface.co, which CI cannot reach (``tests/models/test_kat.py`` replays both pretrained tests
from a local file). TorchScript is not supported (README, "Using it"): its cases skip with that reason.
"""
import pytest

import kat  # noqa: F401  (registers kat_* with timm)

NETWORK = {"test_model_load_pretrained", "test_model_features_pretrained", "test_model_inference"}
TORCHSCRIPT = {"test_model_forward_torchscript", "test_model_forward_fx_torchscript"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.originalname in NETWORK:
            item.add_marker(pytest.mark.skip(reason="network: downloads from huggingface.co"))
        elif item.originalname in TORCHSCRIPT:
            item.add_marker(pytest.mark.skip(reason="TorchScript: not supported by kat (README, Using it)"))
