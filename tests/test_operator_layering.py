"""The operator's layers: pure modules stay pure, and the image needs no proxy runtime.

``targets`` and ``injection`` compute bundles, status and pod patches from
plain data; they must not reach for the cluster, the network or an event loop.
The operator image installs only the ``operator`` extra, so nothing the
operator imports may need the proxy's runtime dependencies.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

OPERATOR = Path(__file__).resolve().parents[1] / "operator" / "steward_operator"
PURE = ["targets.py", "injection.py"]
NOT_IN_PURE = (
    "asyncio",
    "socket",
    "ssl",
    "kopf",
    "kubernetes",
    "aiohttp",
    "urllib.request",
    "http",
)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE, ids=lambda m: f"{m} does no I/O")
def test_pure_operator_modules_import_no_io(module: str) -> None:
    found = imported(OPERATOR / module)
    assert [n for n in found if n == "urllib" or n.startswith(NOT_IN_PURE)] == []


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pglast", "scramp", "uvloop"}:
            raise ImportError(f"{name} is not in the operator image")
sys.meta_path.insert(0, Block())
import steward_operator.main, steward_operator.handlers
from steward_operator.cli import build_parser
build_parser().parse_args([])
"""


def test_the_operator_imports_without_the_proxy_runtime() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
