"""The package structure holds: dependencies point one way and no module imports itself back.

Every import counts, including the ones inside functions (lazy imports still form cycles), and
docs/architecture.md names only modules that exist.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("privacy", "clients", "server", "assistant")
# who may import whom (beyond itself); server may use only the task contract of clients
ALLOWED = {
    "privacy": set(),
    "clients": {"privacy"},
    "server": {"privacy", "clients.task"},
    "assistant": {"server", "privacy", "clients.task"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from pkg import module` depends on that module; the package's own __init__ runs
            # too, but that is Python's normal package loading, not a dependency on the package
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            yield from subs
            if len(subs) < len(node.names):
                yield base


def _ours(target: str) -> str | None:
    """The module of ours an import refers to (the longest known prefix)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


GRAPH = {name: {t for imp in _imports(name, path) if (t := _ours(imp)) and t != name}
         for name, path in MODULES.items()}


def test_dependencies_point_one_way() -> None:
    bad = []
    for name, targets in GRAPH.items():
        top = name.split(".")[0]
        for target in targets:
            if target.split(".")[0] == top:
                continue
            if not any(target == a or target.startswith(a + ".") for a in ALLOWED[top]):
                bad.append(f"{name} -> {target}")
    assert not bad, "imports against the dependency direction:\n" + "\n".join(sorted(bad))


def test_no_import_cycles_including_imports_inside_functions() -> None:
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_architecture_doc_names_only_modules_that_exist() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:privacy|clients|server|assistant)(?:/\w+)*(?:/[\w.]+\.py|/))",
                           doc))
    assert len(named) > 15
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_package_states_its_job(pkg: str) -> None:
    for init in (ROOT / pkg).rglob("__init__.py"):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} has no docstring"
