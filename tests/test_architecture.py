"""The package's shape: no module of nexa_core imports another that imports it back (at module or
function level), so each can be read and tested on its own terms."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nexa_core"


def _imports() -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}  # fmt: skip
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nexa_core"):
                deps.add(node.module)
                deps |= {
                    f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules
                }
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps & modules.keys() - {name}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = _imports()
    assert len(graph) > 30  # the walk found the package
    mutual = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
    assert mutual == [], f"modules importing each other: {mutual}"
