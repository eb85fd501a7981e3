"""``forecaster/`` and ``streamer/`` never import each other: they meet only in ``volcast/``
(architecture.md). Read from the source with ``ast``, so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(("package", "forbidden"), [("forecaster", "streamer"), ("streamer", "forecaster")])
def test_packages_do_not_import_each_other(package: str, forbidden: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    offenders = [str(f.relative_to(ROOT)) for f in files if forbidden in imported_packages(f)]
    assert offenders == [], f"{package}/ imports {forbidden}/ in {offenders}: wire them together in volcast/"


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("def f() -> None:\n    from streamer.service import run\n    import forecaster.worker\n")
    assert imported_packages(source) == {"streamer", "forecaster"}
