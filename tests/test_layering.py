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
]
FORBIDDEN = {"asyncio", "socket", "ssl", "selectors", "uvloop"}


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
