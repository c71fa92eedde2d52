"""The layout rule (DESIGN.md section 8): common/ imports no framework or app code; client and server
never import each other (what they share lives in common/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "common": {"client", "server", "simulations", "flwr", "fedgckd"},
    "client": {"server", "simulations", "fedgckd"},
    "server": {"client", "simulations", "fedgckd"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layout(package):
    bad = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package])
           for f in (ROOT / package).rglob("*.py")}
    assert not {f: r for f, r in bad.items() if r}
