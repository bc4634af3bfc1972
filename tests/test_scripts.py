"""The README's two commands and CI: present, wired together, and the quickstart's job runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


def test_readme_gives_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/quickstart.sh" in readme and "scripts/test.sh" in readme
    assert (ROOT / ".ci" / "run").read_text().count("scripts/test.sh") == 1


def test_ci_fails_when_pytest_collects_nothing(tmp_path):
    # A copy of .ci/run whose test.sh collects no tests must exit non-zero and say so.
    (tmp_path / ".ci").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    (tmp_path / "scripts" / "test.sh").write_text(f"exec {sys.executable} -m pytest -q -p no:cacheprovider empty\n")
    (tmp_path / "empty").mkdir()
    res = subprocess.run(["bash", ".ci/run"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 5 and "no tests" in res.stderr


@pytest.mark.slow
def test_quickstart_trains_resumes_and_evaluates(tmp_path):
    # Run in a copy of the checkout that shares this .venv, skipping the install step.
    for name in ("scripts", "data"):
        os.symlink(ROOT / name, tmp_path / name)
    os.symlink(Path(sys.executable).parent.parent, tmp_path / ".venv")
    env = {**os.environ, "STREAMTRAIN_SKIP_INSTALL": "1"}
    for _ in range(2):  # idempotent: the second run works the same
        res = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert "resuming from runs/quickstart/ckpt-" in res.stderr
        acc = float(re.search(r"^accuracy (\S+)", res.stdout, re.M).group(1))
        assert acc > 0.95
        assert re.search(r"trained 60 epochs, .*samples/s", res.stdout)


def test_the_cli_reference_is_generated_from_the_commands(root):
    res = subprocess.run([sys.executable, str(root / "scripts" / "cli_reference.py"), "--check"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
