"""The layering contract, checked on every run: imports point one way (ui -> pipelines -> extensions), only
`pipelines/engine/` imports torch at module level, and importing the UI loads no torch at all."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "diffusers", "transformers", "spandrel", "controlnet_aux")


def module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported when `path` is imported (not inside functions or TYPE_CHECKING)."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return names


def test_torch_is_imported_at_module_level_only_in_the_engine_and_extensions():
    offenders = []
    for path in sorted([*(ROOT / "pipelines").rglob("*.py"), *(ROOT / "ui").rglob("*.py"), ROOT / "app.py"]):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] in (("pipelines", "engine"), ("pipelines", "configs")):
            continue
        heavy = sorted(module_level_imports(path) & set(HEAVY))
        if heavy:
            offenders.append(f"{rel}: {', '.join(heavy)}")
    assert not offenders, "torch-side imports outside pipelines/engine:\n" + "\n".join(offenders)


def test_the_checker_sees_a_module_level_torch_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import diffusers\n"
                   "def f():\n    import transformers\nimport torch.nn as nn\n")
    assert module_level_imports(bad) & set(HEAVY) == {"torch"}


def test_importing_every_ui_module_loads_no_torch():
    mods = sorted("ui." + p.stem for p in (ROOT / "ui").glob("*.py") if p.stem != "__init__")
    code = (f"import sys, importlib\nfor m in {mods!r}:\n    importlib.import_module(m)\n"
            f"bad = sorted(m for m in {HEAVY!r} if m in sys.modules)\nassert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: ui -> pipelines -> extensions; the UI never imports the engine or
    the model libraries; parameters, advice, sweeps, jobs and settings never import the engine."""
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is in tests/requirements.txt"
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
