"""The import contracts (``[tool.importlinter]`` in pyproject.toml) hold, and they catch a wrong-way import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is a dev dependency (make setup)")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def copy_tree(tmp_path: Path) -> Path:
    target = tmp_path / "tree"
    shutil.copytree(ROOT / "trl_safedistill", target / "trl_safedistill", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def test_contracts_are_kept():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    "module, wrong_import",
    [
        ("records.py", "from .experiments import sizes  # noqa"),  # the library imports the harness
        ("data/bbh_cot.py", "from ..evaluation import prepare  # noqa"),  # data -> evaluation (the other way round)
        ("formats/standard.py", "from ..methods import entropy_mask  # noqa"),  # formats and methods are independent
    ],
)
def test_a_wrong_way_import_breaks_the_build(tmp_path, module, wrong_import):
    tree = copy_tree(tmp_path)
    path = tree / "trl_safedistill" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{wrong_import}\n", encoding="utf-8")
    done = lint(tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout.upper()
