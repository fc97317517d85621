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


def _imports(path: Path, root: Path = ROOT) -> list[tuple[tuple[str, ...], int]]:
    """(names, line) of everything the file imports or names for importlib, in any scope: `names` are what the
    import may mean, the likelier first (`from a.b import c` is module a.b.c if there is one, else a.b)."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[tuple[str, ...], int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [((alias.name,), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [((f"{base}.{alias.name}", base), node.lineno) for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and NAMED_MODULE.match(node.value):
            found.append(((node.value.partition(":")[0],), node.lineno))
    return [(names, line) for names, line in found if names[-1].split(".")[0] == "lib_sdtrain"]


def _resolve(names: tuple[str, ...], modules: set[str]) -> str:
    """The module an import reaches: the first of `names` that is one, else the last with attributes cut off."""
    name = next((n for n in names if n in modules), names[-1])
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def _module_edges() -> dict[tuple[str, str], list[str]]:
    """{(module, module it imports): ["file:line", ...]} over lib_sdtrain."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for names, line in _imports(path):
            target = _resolve(names, modules)
            if target != source:
                edges[source, target].append(f"{path.relative_to(ROOT)}:{line}")
    return edges


def _package_edges() -> dict[tuple[str, str], list[str]]:
    """{(from unit, to unit): ["file:line imports module", ...]} between different units."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (source, target), places in _module_edges().items():
        if _unit(source) != _unit(target):
            edges[_unit(source), _unit(target)] += [f"{place} imports {target}" for place in places]
    return edges


def _cycles(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """Each cycle in the graph, once, as "a -> b -> a" with the import that closes each step."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)

    def path_back(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    found = {}
    for unit in sorted(graph):
        cycle = path_back(unit)
        if cycle and frozenset(cycle) not in found:
            found[frozenset(cycle)] = cycle
    return [
        " -> ".join(cycle) + "\n" + "\n".join(f"    {edges[a, b][0]}" for a, b in pairwise(cycle))
        for cycle in found.values()
    ]


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
    cycles = _cycles(_package_edges())
    assert cycles == [], "cycles between packages:\n" + "\n".join(cycles)


# A package's modules import each other in one direction too. The one exception left: the training loop and its
# outputs (metadata, saving) read each other; the SDXL issue's Trainer split owns that pair.
ALLOWED_MODULE_CYCLES = [{"lib_sdtrain.train.loop", "lib_sdtrain.train.outputs"}]


def test_no_cycle_between_modules():
    cycles = [c for c in _cycles(_module_edges()) if set(c.split("\n")[0].split(" -> ")) not in ALLOWED_MODULE_CYCLES]
    assert cycles == [], "cycles between modules:\n" + "\n".join(cycles)


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
    names = {name for candidates, _ in _imports(source, root=tmp_path) for name in candidates}
    assert {"lib_sdtrain.models.loading", "lib_sdtrain.network.lora", "lib_sdtrain.host.standalone",
            "lib_sdtrain.jobs.runner", "lib_sdtrain.ui.app", "lib_sdtrain.demo.cli"} <= names  # fmt: skip
    assert "lib_sdtrain.api" not in names
