"""The package's shape: imports run one way between the layers, and no two files import each other (directly
or around a loop), function-level imports included."""
import ast
from pathlib import Path
from typing import Dict, List, Set

import edgevit

ROOT = Path(edgevit.__file__).parent
LAYERS = {"models": 0, "deploy": 1, "bench": 2, "train": 2, "dense": 2, "cli": 3}


def _module_name(path: Path) -> str:
    parts = ["edgevit", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path) -> List[str]:
    """The edgevit modules `path` imports (`from . import x` of a submodule counts as importing x)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            out += subs if subs and len(subs) == len(node.names) else [target, *subs]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [t for t in out if t in MODULES]


GRAPH: Dict[str, Set[str]] = {m: set(_imports(p)) - {m} for m, p in MODULES.items()}


def test_imports_run_one_way():
    """models <- deploy <- bench/train/dense <- cli: no module imports from a layer above its own (the
    modules outside these packages, e.g. edgevit.errors, edgevit.utils, edgevit.paper, are below them all)."""
    bad = []
    for mod, targets in GRAPH.items():
        parts = mod.split(".")
        if mod == "edgevit":  # the package's front door re-exports from every layer
            continue
        mine = LAYERS.get(parts[1]) if len(parts) > 2 or MODULES[mod].name == "__init__.py" else None
        for t in targets:
            theirs = LAYERS.get(t.split(".")[1]) if len(t.split(".")) > 1 else None
            if theirs is not None and (mine is None or theirs > mine):
                bad.append(f"{mod} imports {t}")
    assert not bad, bad


def test_no_import_cycle_between_files():
    """Depth-first search for a cycle in the file import graph (every import statement, at any level)."""
    cycles, state = [], {}

    def visit(m: str, stack: List[str]) -> None:
        state[m] = "open"
        for t in sorted(GRAPH[m]):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t] if t in stack else [m, t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_graph_sees_real_imports():
    """(The graph above is read right: known edges are in it.)"""
    assert "edgevit.models.fused" in GRAPH["edgevit.deploy.runtimes.executorch"]
    assert "edgevit.models.fused" in GRAPH["edgevit.models.edgevit"]  # (the import inside each module's fuse())
    assert "edgevit.deploy.runtimes.onnxruntime" in GRAPH["edgevit.deploy.runtimes"]
