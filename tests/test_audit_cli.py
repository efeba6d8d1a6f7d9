"""``steward audit verify``: exit codes and messages."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from steward_proxy.audit import AuditWriter
from steward_proxy.commands import audit as audit_command


def run(argv: list[str]) -> int:
    """Run the command through the real ``steward`` parser when it assembles, else alone."""
    try:
        from steward_proxy.cli import main
    except ImportError:  # pragma: no cover - other commands not importable here
        parser = argparse.ArgumentParser(prog="steward")
        audit_command.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        return int(args.func(args))
    return main(argv)


def make_trail(path: Path, records: int = 5, max_bytes: int = 0) -> Path:
    with AuditWriter(path, max_bytes=max_bytes) as writer:
        for n in range(records):
            writer.write("statement", identity="user:alice", statement="SELECT $1", rows=n)
    return path


def test_intact_trail_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_trail(tmp_path / "audit.log")
    assert run(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"OK: 5 records, chain intact ({path})"
    assert out[1].startswith("last record: seq 5, hash ")


def test_rotated_trail_lists_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_trail(tmp_path / "audit.log", records=6, max_bytes=1000)
    assert run(["audit", "verify", str(path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("OK: 6 records, chain intact (")
    assert f"{path}.1, " in first and first.endswith(f", {path})")


def test_changed_record_exits_1_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_trail(tmp_path / "audit.log", records=9)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[6] = lines[6].replace(b"user:alice", b"user:alicf")
    path.write_bytes(b"".join(lines))
    assert run(["audit", "verify", str(path)]) == 1
    assert capsys.readouterr().out.strip() == (
        f"FAIL: {path} line 7 (seq 7): record changed: hash does not match its content"
    )


def test_truncated_trail_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_trail(tmp_path / "audit.log")
    path.write_bytes(path.read_bytes()[:-10])
    assert run(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL: {path} line 5: malformed record: ")


def test_partial_trail_notes_where_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_trail(tmp_path / "audit.log")
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[2:]))
    assert run(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 records, chain intact" in out
    assert "starts at seq 3" in out
    assert run(["audit", "verify", "--complete", str(path)]) == 1


def test_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.log"
    assert run(["audit", "verify", str(missing)]) == 2
    captured = capsys.readouterr()
    assert f"cannot read {missing}" in captured.err
    assert captured.out == ""


def test_directory_is_unreadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "verify", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_steward_executable(tmp_path: Path) -> None:
    path = make_trail(tmp_path / "audit.log")
    done = subprocess.run(
        [sys.executable, "-m", "steward_proxy", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 5 records, chain intact")
