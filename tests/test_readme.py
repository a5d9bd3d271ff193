"""The README's Python blocks run as they stand, each in a fresh namespace in an empty folder, and the
configs it names exist."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    if "print(mlp(" in BLOCKS[index]:
        assert "torch.Size([2, 197, 384])" in capsys.readouterr().out


def test_readme_configs_exist():
    for name in set(re.findall(r"configs/[\w.]+\.yaml", README)):
        assert (ROOT / name).is_file(), name
