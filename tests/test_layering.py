"""The pure core never imports the I/O machinery.

``wire``, ``sql``, ``policy`` and ``session`` compute on plain data; only the
asyncio shell may touch sockets, TLS or an event loop. import-linter enforces
this from ``pyproject.toml``; this test checks the same rule on its own by
reading every module's syntax tree, so it also catches imports hidden inside
functions. New pure packages (masking) join both lists when they arrive.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PURE_PACKAGES = [
    "steward_proxy.wire",
    "steward_proxy.sql",
    "steward_proxy.policy",
    "steward_proxy.session",
    "steward_proxy.startup",
    "steward_proxy.escape",
    "steward_proxy.engine",
    "steward_proxy.admission",
    "steward_proxy.sqlstate",
    "steward_proxy.masking",
    "steward_proxy.auth.base",
    "steward_proxy.auth.methods",
    "steward_proxy.auth.oidc",
    "steward_proxy.auth.scram",
    "steward_proxy.auth.mtls",
    "steward_proxy.review",
    "steward_proxy.prepared",
]
FORBIDDEN = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "uvloop",
    "prometheus_client",
    "http",
    "urllib",
}


def forbidden_imports(source: str, filename: str) -> list[str]:
    """``line: module`` for each import of a forbidden top-level module."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def source_files(name: str) -> list[Path]:
    """Every ``.py`` file of a package, or the one file of a module."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, f"{name} is missing"
    if not spec.submodule_search_locations:
        return [Path(spec.origin)]
    return [p for d in spec.submodule_search_locations for p in sorted(Path(d).rglob("*.py"))]


@pytest.mark.parametrize("package", PURE_PACKAGES, ids=lambda p: f"{p} does no I/O")
def test_pure_package_does_not_import_io_modules(package: str) -> None:
    offenders = {}
    for path in source_files(package):
        found = forbidden_imports(path.read_text(encoding="utf-8"), str(path))
        if found:
            offenders[str(path)] = found
    assert offenders == {}


def steward_imports(source: str, filename: str, package: str) -> set[str]:
    """The ``steward_proxy`` modules a module imports (absolute and relative)."""
    found = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("steward_proxy")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.startswith("steward_proxy"):
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if _is_module(m)}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, AttributeError):  # ``module.attribute``, not a module
        return False


def submodules(name: str) -> list[str]:
    """``name`` and, for a package, every module in it."""
    spec = importlib.util.find_spec(name)
    assert spec is not None
    if not spec.submodule_search_locations:
        return [name]
    out = []
    for root in spec.submodule_search_locations:
        for path in sorted(Path(root).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out.append(".".join((name, *parts)))
    return out


def closure(name: str) -> set[str]:
    """Every ``steward_proxy`` module ``name`` imports, directly or not."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin
        package = module if spec.submodule_search_locations else module.rpartition(".")[0]
        path = Path(spec.origin)  # a package's __init__.py: what importing it runs
        todo += steward_imports(path.read_text(encoding="utf-8"), str(path), package)
    return seen


@pytest.mark.parametrize("package", PURE_PACKAGES, ids=lambda p: f"all {p} imports does no I/O")
def test_everything_a_pure_package_imports_is_pure(package: str) -> None:
    offenders = {}
    modules = set().union(*(closure(m) for m in submodules(package)))
    for module in sorted(modules):
        path = Path(importlib.util.find_spec(module).origin)  # type: ignore[union-attr,arg-type]
        found = forbidden_imports(path.read_text(encoding="utf-8"), str(path))
        if found:
            offenders[str(path)] = found
    assert offenders == {}


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        pytest.param("import asyncio", True, id="a plain import is caught"),
        pytest.param("import os, socket as s", True, id="an import in a list is caught"),
        pytest.param("from ssl import SSLContext", True, id="a from-import is caught"),
        pytest.param("import asyncio.streams", True, id="a submodule import is caught"),
        pytest.param("def f():\n    import selectors\n", True, id="an import in a function"),
        pytest.param("from . import socket", False, id="a relative import is not stdlib"),
        pytest.param("import socketserver_like", False, id="a similar name is allowed"),
        pytest.param("import struct", False, id="struct is allowed"),
    ],
)
def test_scanner_recognises_forbidden_imports(source: str, caught: bool) -> None:
    assert bool(forbidden_imports(source, "<test>")) is caught
