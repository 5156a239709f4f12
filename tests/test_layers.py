"""The layout is the architecture: web -> core / variants -> kafka, and nothing imports back up.

Read from the source (AST), so it holds for imports inside functions too (the Kafka side is imported lazily, after
gevent patched); imports under ``if TYPE_CHECKING:`` are annotations only and not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
SDK = PACKAGE.parent / "sdk" / "gateway_sdk"
# the entry points: the only modules that may import the app factory (gateway/__init__.py)
ENTRY = {"gateway.broker", "gateway.cli", "gateway.serve", "gateway.serve.gunicorn_conf", "gateway.serve.worker",
         "gateway.serve.safety", "gateway.wsgi", "gateway"}

# module prefix -> prefixes it must never import
FORBIDDEN = {
    "gateway.core": ("gateway.web", "gateway.variants"),
    "gateway.variants": ("gateway.web",),
    "gateway.kafka": ("gateway.web", "gateway.variants", "gateway.core.runtime", "gateway.core.calls"),
    "gateway.config": ("gateway.web", "gateway.core", "gateway.variants", "gateway.kafka"),
    "gateway.errors": ("gateway.web", "gateway.core", "gateway.variants", "gateway.kafka", "gateway.config"),
    "gateway.protocol": ("gateway.web", "gateway.core", "gateway.variants", "gateway.kafka", "gateway.config"),
    "gateway.extensions": ("gateway.web", "gateway.core", "gateway.variants", "gateway.kafka"),
    "gateway.metrics": ("gateway.web", "gateway.core", "gateway.variants", "gateway.kafka"),
    "gateway.supervise": ("gateway.web", "gateway.core", "gateway.variants", "gateway.kafka"),
    "gateway.jsonutil": ("gateway.web", "gateway.core", "gateway.variants", "gateway.kafka"),
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every gateway module *path* imports at run time (``from x import name`` counts x.name when that is a
    module, else x)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("gateway") and (top or not top_level_only):
                    for alias in child.names:
                        sub = f"{target}.{alias.name}"
                        as_file = PACKAGE.parent / Path(*sub.split("."))
                        found.add(sub if as_file.with_suffix(".py").exists() or as_file.is_dir() else target)
            elif isinstance(child, ast.Import):
                if top or not top_level_only:
                    found.update(a.name for a in child.names if a.name.startswith("gateway"))
            visit(child, inner)

    visit(ast.parse(path.read_text()), True)
    return found


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_back_up_the_layers(module: str) -> None:
    bad = []
    for prefix, forbidden in FORBIDDEN.items():
        if module == prefix or module.startswith(prefix + "."):
            bad += [m for m in imports(MODULES[module]) if any(m == f or m.startswith(f + ".") for f in forbidden)]
    # the app factory (gateway/__init__.py) is the top: only the entry points import it
    if module not in ENTRY:
        bad += [m for m in imports(MODULES[module]) if m == "gateway"]
    assert not bad, f"{module} imports {sorted(set(bad))}"


def test_no_import_cycles_at_module_level() -> None:
    graph = {m: {i for i in imports(p, top_level_only=True) if i in MODULES and i != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: an import of the web layer inside a function is found."""
    probe = PACKAGE / "core" / "_layer_probe.py"
    probe.write_text("def f():\n    from ..web import proxy\n    return proxy\n")
    try:
        assert "gateway.web.proxy" in imports(probe)
    finally:
        probe.unlink()


@pytest.mark.parametrize("path", sorted(SDK.rglob("*.py")), ids=lambda p: p.name)
def test_the_sdk_imports_nothing_of_the_gateway(path: Path) -> None:
    """The SDK is its own distribution (kafka-python only): an import of the gateway package would fail where a
    service installed the SDK alone."""
    tree = ast.parse(path.read_text())
    bad = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level and n.module
           and (n.module == "gateway" or n.module.startswith("gateway."))]
    bad += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
            if a.name == "gateway" or a.name.startswith("gateway.")]
    assert not bad, f"{path} imports {bad}"
