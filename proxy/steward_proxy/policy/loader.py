"""Reading policy documents from files and directories: the I/O edge of ``policy``.

A path is a YAML file (any number of ``---``-separated documents) or a
directory, of which the ``*.yaml`` and ``*.yml`` files directly inside are read
in name order. Directories are not searched recursively and names starting with
``.`` are skipped, so a Kubernetes ConfigMap volume (whose ``..data`` links point
at the same files again) loads each file once. Empty documents are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from steward_proxy.policy.compile import compile_documents
from steward_proxy.policy.model import PolicyError, PolicySet
from steward_proxy.policy.validate import SourceDocument

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
YAML_SUFFIXES = (".yaml", ".yml")

PathLike = str | Path


def policy_files(paths: Sequence[PathLike]) -> tuple[list[Path], list[str]]:
    """The files ``paths`` stand for, and an error for each path that is missing."""
    files: list[Path] = []
    errors: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix in YAML_SUFFIXES and not p.name.startswith(".") and p.is_file()
                )
            )
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or directory")
    return files, errors


def read_documents(paths: Sequence[PathLike]) -> tuple[list[SourceDocument], list[str]]:
    """Every non-empty document under ``paths`` with its origin, and read errors."""
    files, errors = policy_files(paths)
    documents: list[SourceDocument] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{file}: cannot read: {exc}")
            continue
        found, error = parse_documents(text, str(file))
        documents.extend(found)
        if error is not None:
            errors.append(error)
    return documents, errors


def parse_documents(text: str, origin: str) -> tuple[list[SourceDocument], str | None]:
    """The non-empty YAML documents in ``text`` (from ``origin``), or why it is not YAML."""
    try:
        parsed = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        return [], f"{origin}: not valid YAML: {_one_line(exc)}"
    return [
        SourceDocument(doc, origin, i) for i, doc in enumerate(parsed, start=1) if doc is not None
    ], None


def load_documents(paths: Sequence[PathLike]) -> list[dict[str, Any]]:
    """The documents under ``paths``; raises :class:`PolicyError` if a file cannot be read."""
    documents, errors = read_documents(paths)
    if errors:
        raise PolicyError(errors)
    return [d.document for d in documents]


def load_policy_set(paths: Sequence[PathLike]) -> PolicySet:
    """Read, validate and compile; raises :class:`PolicyError` on any problem at all.

    Finding no document is an error too: an empty policy set would refuse every
    subject, which is never what a mistyped path meant.
    """
    documents, errors = read_documents(paths)
    if errors:
        raise PolicyError(errors)
    if not documents:
        raise PolicyError([f"no policy documents found in {', '.join(map(str, paths))}"])
    return compile_documents(documents)


def _one_line(exc: yaml.YAMLError) -> str:
    return " ".join(str(exc).split())
