"""Checkpoints are untrusted input: a pickle that would run code is refused, and the code never runs."""
import pickle

import pytest

from kat.cli.common import load_checkpoint_file
from kat.models import load_state_dict_file


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("loader", [load_checkpoint_file, load_state_dict_file])
def test_malicious_pickle_is_refused_and_not_executed(loader, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload(str(marker))}, f)
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pth"):
        loader(path)
    assert not marker.exists()
