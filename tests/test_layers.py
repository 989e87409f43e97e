"""The layering of the code, read from its imports (`ast`), so that it cannot rot: no import cycle between
modules, and no module importing from a layer above its own (docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "rollout", "rewards")

# Bottom to top. A module may import from its own layer and the layers below it, never from one above.
LAYERS = (
    ("engine", "engine.base"),  # `engine` itself: the package's start-up (the no-GPU flag, a log filter)
    ("engine.runtime", "engine.ops", "engine.tasks"),
    ("engine.config", "engine.builtin"),
    ("engine.models",),
    ("rollout",),
    ("rewards",),
    ("engine.update",),
    ("engine.loop",),
    ("engine.objectives",),
    ("engine.reward_model", "engine.train", "engine.train_rm", "engine.evaluate", "engine.sweep"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


OUTSIDE = ("bench", "tests", "scripts", "examples")  # the package never imports these


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (a function-level import counts too). `from a
    import b` names module a.b when b is a module, else a. A relative import is refused: the layers are read
    from absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; write the absolute name"
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    outside = sorted(name for name in found if name.split(".")[0] in OUTSIDE)
    assert not outside, f"{path} imports {outside}, which are not part of the package"
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def layer_of(module: str) -> int:
    """The layer of the longest declared prefix of `module` (`engine` itself names only the package's
    __init__, so a new module directly under engine/ or a new subpackage must be declared)."""
    best, layer = "", None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            covers = module == prefix or (prefix != "engine" and module.startswith(prefix + "."))
            if covers and len(prefix) > len(best):
                best, layer = prefix, index
    if layer is None:
        raise AssertionError(f"{module} is in no declared layer: add its package to LAYERS")
    return layer


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan's algorithm), each as its members."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
            for module, targets in sorted(graph.items()) for target in sorted(targets)
            if layer_of(target) > layer_of(module)]


def test_the_checks_catch_a_cycle_and_an_upward_import():
    graph = {"engine.base.a": {"engine.base.b"}, "engine.base.b": {"engine.base.a"}, "engine.ops.c": set(),
             "engine.update.d": {"engine.ops.c"}, "rollout.e": {"engine.update.d"}}
    assert cycles(graph) == [["engine.base.a", "engine.base.b"]]
    assert upward_imports(graph) == ["rollout.e (layer 4) imports engine.update.d (layer 6)"]
    assert layer_of("engine.objectives.pairs.psrlm") == layer_of("engine.objectives")
    with pytest.raises(AssertionError, match="in no declared layer"):
        layer_of("engine.newpackage.module")


def test_every_module_is_in_a_layer_and_imports_only_its_own_or_lower():
    graph = import_graph()
    assert len(graph) > 60 and "engine.update.learner" in graph["engine.train"] | {
        t for m in graph["engine.train"] for t in graph[m]}  # the graph is really read
    assert upward_imports(graph) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_file_is_past_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.glob("*/**/*.py")
            if p.parts[len(ROOT.parts)] in (*PACKAGES, "bench", "scripts", "examples")
            and (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def documented_modules(text: str) -> set[str]:
    """The files named in docs/architecture.md's "## Modules" block: `pkg/` headers, then `  name.py` lines."""
    block = text.split("## Modules", 1)[1].split("```")[1]
    found, folder = set(), ""
    for line in block.splitlines():
        if line and not line.startswith(" "):
            folder = line.split()[0] if line.split()[0].endswith("/") else "engine/"
        elif line.strip():
            name = line.split()[0]
            if name.endswith(".py"):
                found.add(folder + name)
            elif name.endswith("/"):  # a subpackage in one line: its files are named in the description
                found |= {folder + name + f.strip(",():") for f in line.split() if f.strip(",():").endswith(".py")}
    return found


def test_the_architecture_doc_lists_every_module_and_no_other():
    text = (ROOT / "docs" / "architecture.md").read_text()
    on_disk = {str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")
               if p.name != "__init__.py"} | {"engine/objectives/__init__.py"}
    listed = documented_modules(text)
    assert sorted(on_disk - listed) == [] and sorted(listed - on_disk) == []
    section = text.split("## Layers", 1)[1].split("## Modules", 1)[0]
    table = {int(cells[1]): cells[2] for line in section.splitlines()
             if (cells := line.split("|")) and len(cells) > 3 and cells[1].strip().isdigit()}
    assert sorted(table) == list(range(len(LAYERS)))  # the layer table: the same layers, in the same rows
    for index, prefixes in enumerate(LAYERS):
        named = {name.strip(" `/").removesuffix(".py").replace("/", ".") for name in table[index].split(", ")}
        assert named == set(prefixes) - {"engine"}, (index, named)


def test_every_package_is_installed():
    """pyproject.toml lists the packages one by one: a new subpackage missing there would import from a checkout
    but not from an installed copy."""
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {module_name(p) for package in PACKAGES for p in (ROOT / package).rglob("__init__.py")}
    assert on_disk == declared
