"""The shape of the code: nothing fast imports anything heavy, and the layer contracts can fail.

The layer contracts live in pyproject.toml ([tool.importlinter]): config and hardware at the bottom (with the
errors, hub and work helpers under them), then data, plan, engine, demo, and cli and ui at the top; inside the
engine, its stages in order. .ci/run checks that they hold (lint-imports), with ruff and mypy; these tests prove
that a contract broken is caught.
"""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tuneterm
from tests.helpers import ROOT

BIN = Path(sys.executable).parent
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate")
# Modules that exist to subclass a heavy library's class; everything else imports heavy libraries in functions.
HEAVY_BY_DESIGN = {"tuneterm.engine.run.callback"}


def _lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lint-imports"), "--config", str(project / "pyproject.toml"), "--no-cache"],
                          cwd=project, capture_output=True, text=True, env={"PYTHONPATH": str(project)})


def _with_an_import_added(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """lint-imports on a copy of the project whose `module` (a path under tuneterm/) gains `line`."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "tuneterm", project / "tuneterm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    changed = project / "tuneterm" / module
    changed.write_text(changed.read_text() + f"\n{line}  # noqa\n")
    return _lint_imports(project)


def test_the_layer_contract_catches_an_upward_import(tmp_path: Path) -> None:
    result = _with_an_import_added(tmp_path, "data/records.py", "from tuneterm.engine.events import EVENTS_FILE")
    assert result.returncode != 0
    assert "tuneterm.data.records -> tuneterm.engine.events" in result.stdout


def test_the_engine_stage_contract_catches_a_stage_importing_a_later_one(tmp_path: Path) -> None:
    result = _with_an_import_added(tmp_path, "engine/rundir/layout.py", "from tuneterm.engine.run.runner import run")
    assert result.returncode != 0
    assert "The engine's stages import only the stages below them BROKEN" in result.stdout
    assert "tuneterm.engine.rundir.layout -> tuneterm.engine.run.runner" in result.stdout


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(tuneterm.__path__, "tuneterm.")
                  if m.name != "tuneterm.__main__" and m.name not in HEAVY_BY_DESIGN)


# Run by one interpreter that imports nothing else first: each group of modules is imported in a child forked from
# it, as a fresh interpreter would import it; a group that imports something forbidden is imported again one module
# per child, to name the modules that do.
IMPORT_EACH = """
import importlib, json, os, sys

def imported(modules, forbidden):
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        try:
            for module in modules:
                importlib.import_module(module)
            found = sorted(m for m in forbidden if m in sys.modules)
        except BaseException as error:
            found = [f"import failed: {error!r}"]
        os.write(write, json.dumps(found).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        found = json.loads(answer.read() or '["no answer"]')
    os.wait()
    return found

groups = json.loads(sys.argv[1])
found = {}
for modules, forbidden in groups:
    if imported(modules, forbidden):
        found.update({module: imported([module], forbidden) for module in modules})
    else:
        found.update(dict.fromkeys(modules, []))
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def forbidden_imports() -> dict[str, list[str]]:
    """For each module, the forbidden libraries that importing it alone imports."""
    modules = _modules()
    groups = [([m for m in modules if not m.startswith("tuneterm.ui")], [*HEAVY, "textual"]),
              ([m for m in modules if m.startswith("tuneterm.ui")], list(HEAVY))]
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH, json.dumps(groups)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", _modules())
def test_importing_a_module_imports_nothing_heavy(module: str, forbidden_imports: dict[str, list[str]]) -> None:
    """Importing any module (the app's included) must not import torch or the Hugging Face libraries, and only
    the app may import textual: the command line and the first screen stay fast."""
    assert forbidden_imports[module] == []


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys\nfrom tuneterm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip().splitlines()[-1] == "[]"


def test_collecting_the_unit_tests_imports_no_torch() -> None:
    """Unit tests stay fast to start: torch is imported by the tests that need it, when they run."""
    code = ("import sys, pytest\npytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests/unit'])\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout
    assert output.strip().splitlines()[-1] == "[]"
