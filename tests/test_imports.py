"""Every `from lib_sdtrain... import name` resolves, the ones inside functions too (imported late to keep the
WebUI's start fast): ruff cannot see those, and a renamed helper would otherwise fail only when a user clicks."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def late_and_early_imports() -> list[tuple[str, int, str, str]]:
    found = []
    for path in sorted([*(ROOT / "lib_sdtrain").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lib_sdtrain"):
                found += [(str(path.relative_to(ROOT)), node.lineno, node.module, alias.name) for alias in node.names]
    return found


def test_every_imported_name_exists():
    imports = late_and_early_imports()
    assert len(imports) > 300  # the walk found the code
    missing = []
    for path, line, module_name, name in imports:
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{path}:{line}: {module_name}.{name}")
    assert missing == []
