"""The package's layer order, checked on every import statement (top-level and inside functions).

gqtok is layered; a module may import from its own sub-package and from lower layers only:

    0  errors, version                      leaf modules
    1  quant/ nets/ io/ dist                GQ itself, the networks, bytes and pixels, ranks
    2  format/                              .gq container, entropy coder, cards, token shards
    3  model                                one model file: networks + GQ settings + entropy
    4  zoo/                                 names, registry, Hub, checkpoint conversion
    5  codec/                               images <-> tokens <-> .gq bytes
    6  api, eval/                           Python API; metrics, evaluate, compare
    7  export                               token exports (uses eval's preprocessing protocol)
    8  train/                               training and model export
    9  cli/                                 the command line
   10  gqtok (__init__), __main__           the facade

Modules of one layer that are not in the same sub-package may not import each other (quant
and nets, say, are independent). Inside a sub-package imports are free but acyclic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gqtok"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "version"),
    ("quant", "nets", "io", "dist"),
    ("format",),
    ("model",),
    ("zoo",),
    ("codec",),
    ("api", "eval"),
    ("export",),
    ("train",),
    ("cli",),
    ("__init__", "__main__"),
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """The layer unit of a dotted module name below gqtok ("gqtok.zoo.load" -> "zoo")."""
    parts = module.split(".")
    assert parts[0] == "gqtok", module
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported gqtok module) for every import in the file, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("gqtok")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("gqtok"):
                continue
            if node.module is None or mod == "gqtok" or (PKG / mod.split(".", 1)[-1]).is_dir():
                # "from gqtok.pkg import mod": the names may be modules of that package
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    rel = Path(*sub.split(".")[1:])
                    is_mod = (PKG / rel).with_suffix(".py").is_file() or (PKG / rel).is_dir()
                    found.append((node.lineno, sub if is_mod else mod))
            else:
                found.append((node.lineno, mod))
    return found


def violations(root: Path = PKG) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path)
        mine = unit_of(me) if me != "gqtok" else "__init__"
        if path.name == "__main__.py" and path.parent == root:
            mine = "__main__"
        for line, target in imports_of(path):
            theirs = unit_of(target)
            if theirs == mine:
                continue
            if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine]):
                out.append(
                    f"{path.relative_to(root.parent)}:{line}: {mine} (layer {RANK[mine]})"
                    f" imports {target} (layer {RANK[theirs]})"
                )
    return out


def module_graph(root: Path = PKG) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        graph[module_name(path)] = {t for _, t in imports_of(path)}
    return graph


def test_every_module_belongs_to_a_layer() -> None:
    units = {p.stem if p.is_file() else p.name for p in PKG.iterdir() if p.suffix == ".py" or (
        p.is_dir() and (p / "__init__.py").is_file())}
    assert units <= set(RANK), f"modules without a layer: {sorted(units - set(RANK))}"


def test_no_import_points_up_or_sideways() -> None:
    assert violations() == []


def test_no_import_cycle_between_modules() -> None:
    graph = module_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph or nxt.startswith(node + "."):
                continue  # a package importing its own modules (re-exports) is not a cycle
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """A planted import from quant (layer 1) up into the codec (layer 5) is reported, also
    when it hides inside a function."""
    pkg = tmp_path / "gqtok"
    (pkg / "quant").mkdir(parents=True)
    (pkg / "codec").mkdir()
    for d in (pkg, pkg / "quant", pkg / "codec"):
        (d / "__init__.py").write_text("")
    (pkg / "codec" / "bytes.py").write_text("X = 1\n")
    (pkg / "quant" / "search.py").write_text("def f():\n    from gqtok.codec.bytes import X\n")
    global PKG
    saved, PKG = PKG, pkg
    try:
        found = violations(pkg)
    finally:
        PKG = saved
    assert found == ["gqtok/quant/search.py:2: quant (layer 1) imports gqtok.codec.bytes (layer 5)"]
