"""The dependency rules of docs/architecture.md hold: `lint-imports` checks the contracts in
pyproject.toml, and the no-lab contract names every production module (a new top-level module
is covered, not silently exempt)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def test_every_import_contract_is_kept() -> None:
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_no_lab_contract_covers_every_production_module() -> None:
    package = ROOT / "pvcd"
    top_level = {f"pvcd.{path.stem}" for path in package.glob("*.py") if path.stem != "__init__"}
    top_level |= {f"pvcd.{path.name}" for path in package.iterdir()
                  if (path / "__init__.py").exists()}
    covered = set(contracts()["no-lab"]["source_modules"])  # type: ignore[arg-type]
    assert top_level - {"pvcd.lab"} == covered
