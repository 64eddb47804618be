"""The Makefile's promises: `make docs` never reinstalls into an existing environment."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_docs_leaves_an_existing_environment_alone_when_pyproject_is_newer(tmp_path):
    """In a clone that shares a virtual environment, reinstalling would re-point the
    editable install at that clone; `make docs` installs only into a missing one."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv").mkdir()
    stamp = tmp_path / ".venv" / ".installed"
    stamp.touch()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    os.utime(stamp, (1_000_000, 1_000_000))  # older than pyproject.toml
    dry = subprocess.run(["make", "-n", "docs"], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert "sphinx-build" in dry and "pip install" not in dry
    # a missing environment is still created
    shutil.rmtree(tmp_path / ".venv")
    dry = subprocess.run(["make", "-n", "docs"], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert "pip install" in dry
