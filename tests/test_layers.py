"""The packages of lib_sdtrain form layers, and every import points down or sideways, never up, with no cycle
between packages. Every import counts: at module level, inside functions (imported late for speed, still a
dependency), under `if TYPE_CHECKING:` (a dependency for every reader and type checker), and a module named in a
string as `lib_sdtrain.x.y` or `lib_sdtrain.x.y:function` (how importlib.import_module reaches a module)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib_sdtrain"

# Highest first. A unit is a package (lib_sdtrain/<name>/) or a top-level module (lib_sdtrain/<name>.py);
# "lib_sdtrain" is the package's own __init__ (its version).
LAYERS: list[tuple[str, ...]] = [
    ("main", "__main__"),  # `sdtrain`: every command
    ("ui", "demo"),  # the Gradio tabs, and the demo they offer
    ("api",),  # the /sdtrain/v1 routes
    ("jobs",),  # stages run in the background, their checks
    ("cli",),  # the stages' command line, which jobs parse options with
    ("dataset", "prepare", "train", "generate"),  # the pipeline
    ("host",),  # the WebUI or the standalone app
    ("network", "models"),  # LoRA modules and files; model loading, saving, discovery
    ("utils", "errors", "lib_sdtrain"),
]
LAYER_OF = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}
NAMED_MODULE = re.compile(r"^lib_sdtrain(\.\w+)+(:\w+)?$")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(module, line) of everything the file imports or names for importlib, in any scope."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and NAMED_MODULE.match(node.value):
            found.append((node.value.partition(":")[0], node.lineno))
    return [(name, line) for name, line in found if name == "lib_sdtrain" or name.startswith("lib_sdtrain.")]


def _package_edges() -> dict[tuple[str, str], list[str]]:
    """{(from unit, to unit): ["file:line imports module", ...]} between different units."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _unit(_module_name(path))
        for name, line in _imports(path):
            while name not in modules and "." in name:  # `from lib_sdtrain.x import function`
                name = name.rpartition(".")[0]
            target = _unit(name)
            if target != source:
                edges[source, target].append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return edges


def test_every_package_has_a_layer():
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units - set(LAYER_OF) == set(), "add the new package to LAYERS in tests/test_layers.py"


def test_no_import_points_up_a_layer():
    upward = [
        why
        for (source, target), whys in _package_edges().items()
        if LAYER_OF.get(target, -1) < LAYER_OF.get(source, -1)
        for why in whys
    ]
    assert upward == [], "imports that reach up a layer:\n" + "\n".join(upward)


def test_no_cycle_between_packages():
    edges = _package_edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)

    def path_back(start: str) -> list[str] | None:
        """A path start -> ... -> start, if there is one."""
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = {tuple(cycle) for unit in list(graph) if (cycle := path_back(unit))}
    details = [
        " -> ".join(cycle) + "\n" + "\n".join(f"    {edges[a, b][0]}" for a, b in pairwise(cycle))
        for cycle in sorted(cycles)
    ]
    assert details == [], "cycles between packages:\n" + "\n".join(details)


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """What the rules above rest on: each spelling of an import is found."""
    source = tmp_path / "lib_sdtrain" / "train" / "example.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import lib_sdtrain.models.loading\n"
        "from lib_sdtrain.network import lora\n"
        "from ..host import standalone\n"
        "if TYPE_CHECKING:\n    from lib_sdtrain.jobs.runner import Job\n"
        "def late():\n    from lib_sdtrain.ui import app\n"
        "COMMANDS = ['lib_sdtrain.demo.cli:register_cli']\n"
        "'''a docstring naming lib_sdtrain.api is not an import'''\n",
        encoding="utf-8",
    )
    names = {name for name, _ in _imports(source, root=tmp_path)}
    assert {"lib_sdtrain.models.loading", "lib_sdtrain.network.lora", "lib_sdtrain.host.standalone",
            "lib_sdtrain.jobs.runner", "lib_sdtrain.ui.app", "lib_sdtrain.demo.cli"} <= names  # fmt: skip
    assert "lib_sdtrain.api" not in names
