"""AuditWriter: record format, chaining, fsync modes, reopening, rotation, failing closed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import types
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from steward_proxy.audit import (
    AUDIT_FIELDS,
    ZERO_HASH,
    AuditWriteError,
    AuditWriter,
    canonical_json,
    record_hash,
    record_line,
    verify,
)
from steward_proxy.audit import writer as writer_module
from steward_proxy.audit.record import EARLIER_FIELDS

DESIGN_ORDER = [
    "seq", "time", "type", "session", "identity", "groups", "database", "client",
    "application", "backend_pid", "command", "statement", "fingerprint", "decision", "policy",
    "rule", "masked", "rows", "duration_ms", "error", "prev", "hash",
]  # fmt: skip
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def statement(writer: AuditWriter, n: int = 0) -> dict[str, Any]:
    return writer.write(
        "statement",
        session="s-1",
        identity="user:alice",
        groups=["dba"],
        database="orders",
        client="10.0.0.7:51000",
        application="orders-api",
        backend_pid=31337,
        command="SELECT",
        statement=f"SELECT * FROM users WHERE id = $1 /* {n} */",
        fingerprint="50fde20626009aba",
        decision="allow",
        policy="orders-app",
        masked=["public.users.email:email"],
        rows=n,
        duration_ms=0.25,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_every_line_has_every_key_in_design_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path) as writer:
        writer.write("session.start", session="s-1", identity="user:alice")
        statement(writer)
        writer.write("session.end", session="s-1")
    assert tuple(DESIGN_ORDER) == AUDIT_FIELDS
    records = lines(path)
    assert len(records) == 3
    for record in records:
        assert list(record) == DESIGN_ORDER
        assert TIME.fullmatch(record["time"])
    start = records[0]
    assert start["groups"] == [] and start["masked"] == []
    assert start["command"] is None and start["rows"] is None


def test_chain_hashes_and_line_format(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path) as writer:
        returned = [statement(writer, n) for n in range(5)]
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\n\n" not in raw
    prev = ZERO_HASH
    for n, (line, record) in enumerate(zip(raw.splitlines(), lines(path), strict=True), 1):
        assert record == returned[n - 1]
        assert record["seq"] == n
        assert record["prev"] == prev
        body = {k: v for k, v in record.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical_json(record) == canonical.encode()
        assert record["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert record["hash"] == record_hash(record)
        assert line == json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
        prev = record["hash"]


def test_non_ascii_is_stored_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path) as writer:
        writer.write("statement", identity="user:zoë", statement="SELECT 'ü'")
    assert "user:zoë".encode() in path.read_bytes()
    assert verify([path]).ok


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        pytest.param(
            datetime(2024, 2, 29, 12, 34, 56, 789, tzinfo=UTC),
            "2024-02-29T12:34:56.000789Z",
            id="UTC with microseconds",
        ),
        pytest.param(
            datetime(2024, 1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=2))),
            "2023-12-31T23:00:00.000000Z",
            id="other zones are converted to UTC",
        ),
        pytest.param(datetime(2024, 5, 6, 7, 8, 9), "2024-05-06T07:08:09.000000Z", id="naive"),
    ],
)
def test_time_is_rfc3339_utc(tmp_path: Path, moment: datetime, text: str) -> None:
    with AuditWriter(tmp_path / "audit.log", clock=lambda: moment) as writer:
        assert writer.write("statement")["time"] == text


def test_unknown_field_raises_type_error_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path) as writer:
        statement(writer)
        with pytest.raises(TypeError, match="colour"):
            writer.write("statement", colour="red")
        with pytest.raises(TypeError):
            writer.write("statement", seq=99)
        assert writer.seq == 1
        statement(writer)
    assert [r["seq"] for r in lines(path)] == [1, 2]


def test_unserializable_value_does_not_advance_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path) as writer:
        with pytest.raises(ValueError):
            writer.write("statement", duration_ms=float("nan"))
        with pytest.raises(TypeError):
            writer.write("statement", rows=object())
        assert writer.seq == 0
        statement(writer)
    assert verify([path]).ok


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path) as writer:
        for n in range(3):
            statement(writer, n)
        last = writer.last_hash
    with AuditWriter(path) as writer:
        assert (writer.seq, writer.last_hash) == (3, last)
        record = statement(writer)
        assert (record["seq"], record["prev"]) == (4, last)
    result = verify([path])
    assert result.ok and result.records == 4


def test_reopening_a_trail_of_the_earlier_layout_continues_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    earlier = {k: None for k in EARLIER_FIELDS}
    earlier.update(seq=1, time="2024-02-29T12:34:56.789012Z", type="session.start")
    earlier.update(groups=[], masked=[], prev=ZERO_HASH)
    earlier["hash"] = record_hash(earlier)
    path.write_bytes(record_line(earlier))
    with AuditWriter(path) as writer:
        record = statement(writer)
    assert (record["seq"], record["prev"]) == (2, earlier["hash"])
    assert list(lines(path)[1]) == DESIGN_ORDER
    result = verify([path])
    assert result.ok and result.records == 2, result.message


def test_reopening_a_torn_last_line_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path) as writer:
        statement(writer)
        statement(writer)
    intact = path.read_bytes()
    first_line_end = intact.index(b"\n") + 1
    torn = intact[: first_line_end + 40]
    path.write_bytes(torn)
    with pytest.raises(AuditWriteError, match=f"incomplete.*byte {first_line_end}"):
        AuditWriter(path)
    assert path.read_bytes() == torn  # evidence left alone
    os.truncate(path, first_line_end)  # the operator's fix
    with AuditWriter(path) as writer:
        assert statement(writer)["seq"] == 2
    assert verify([path]).ok


@pytest.mark.parametrize(
    "last_line",
    [
        pytest.param(b"not json\n", id="not JSON"),
        pytest.param(b'{"seq":1}\n', id="not a record"),
    ],
)
def test_reopening_a_broken_last_record_fails_closed(tmp_path: Path, last_line: bytes) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(last_line)
    with pytest.raises(AuditWriteError):
        AuditWriter(path)


def test_reopening_a_tampered_last_record_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path) as writer:
        statement(writer)
    path.write_bytes(path.read_bytes().replace(b"user:alice", b"user:mallory"))
    with pytest.raises(AuditWriteError, match="hash does not match"):
        AuditWriter(path)


def test_two_writers_cannot_share_a_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path), pytest.raises(AuditWriteError, match="another writer"):
        AuditWriter(path)


def count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(writer_module, "os", fake_os(fdatasync=fdatasync))
    return calls


@pytest.mark.parametrize(
    ("mode", "interval", "on_write", "on_sync"),
    [
        pytest.param("always", 1.0, 5, 0, id="always syncs every record"),
        pytest.param("never", 0.0, 0, 0, id="never leaves it to the OS"),
        pytest.param("interval", 3600.0, 0, 1, id="interval waits for the interval or sync"),
        pytest.param("interval", 0.0, 5, 0, id="interval 0 syncs every record"),
    ],
)
def test_fsync_modes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: Any,
    interval: float,
    on_write: int,
    on_sync: int,
) -> None:
    calls = count_syncs(monkeypatch)
    writer = AuditWriter(tmp_path / "audit.log", fsync=mode, fsync_interval=interval)
    for n in range(5):
        statement(writer, n)
    assert len(calls) == on_write
    writer.sync()
    writer.sync()  # nothing left to sync
    assert len(calls) == on_write + on_sync
    writer.close()
    assert len(calls) == on_write + on_sync + 1  # close always syncs


def test_write_after_close_raises(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.log")
    writer.close()
    writer.close()  # idempotent
    assert writer.closed
    with pytest.raises(AuditWriteError, match="closed"):
        statement(writer)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_raises_and_keeps_the_chain(tmp_path: Path) -> None:
    writer = AuditWriter("/dev/full", fsync="never")
    with pytest.raises(AuditWriteError, match="No space left"):
        statement(writer)
    assert (writer.seq, writer.last_hash) == (0, ZERO_HASH)
    writer.close()


def test_unopenable_path_raises(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(AuditWriteError, match="cannot open"):
        AuditWriter(not_a_directory / "audit.log")


def fake_os(**overrides: Any) -> types.SimpleNamespace:
    namespace = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os)})
    for name, value in overrides.items():
        setattr(namespace, name, value)
    return namespace


def test_partial_write_is_cut_off_and_the_chain_does_not_advance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    writer = AuditWriter(path, fsync="never")
    statement(writer)
    before = path.read_bytes()
    state = (writer.seq, writer.last_hash)

    def half_then_fail(fd: int, data: bytes) -> int:
        if len(data) > 20:
            return os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module, "os", fake_os(write=half_then_fail))
    with pytest.raises(AuditWriteError, match="No space left"):
        statement(writer)
    assert path.read_bytes() == before
    assert (writer.seq, writer.last_hash) == state
    monkeypatch.undo()
    statement(writer)
    writer.close()
    assert verify([path]).ok


def test_failed_fsync_removes_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.log"
    writer = AuditWriter(path, fsync="always")
    statement(writer)
    before = path.read_bytes()

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer_module, "os", fake_os(fdatasync=failing_sync))
    with pytest.raises(AuditWriteError, match="Input/output error"):
        statement(writer)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert writer.seq == 1
    statement(writer)
    writer.close()
    assert verify([path]).records == 2


def test_a_descriptor_closed_underneath_refuses_all_writes(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    writer = AuditWriter(path)
    statement(writer)
    os.close(writer._fd)  # simulate the descriptor going bad
    with pytest.raises(AuditWriteError):
        statement(writer)
    assert writer.seq == 1
    with pytest.raises(AuditWriteError, match=r"unknown state|Bad file"):
        statement(writer)
    writer._fd = -1  # already closed above
    with AuditWriter(path) as reopened:
        assert statement(reopened)["seq"] == 2
    assert verify([path]).ok


def rotated(tmp_path: Path, records: int = 12, max_bytes: int = 1500) -> Path:
    path = tmp_path / "audit.log"
    with AuditWriter(path, max_bytes=max_bytes) as writer:
        for n in range(records):
            statement(writer, n)
    return path


def test_rotation_numbers_files_oldest_first_and_keeps_the_chain(tmp_path: Path) -> None:
    path = rotated(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "audit.log" and len(names) > 2
    order = [tmp_path / f"audit.log.{i}" for i in range(1, len(names))] + [path]
    seqs = [[r["seq"] for r in lines(p)] for p in order]
    assert [s for chunk in seqs for s in chunk] == list(range(1, 13))
    for p in order:
        assert p.stat().st_size <= 1500
    result = verify([path])
    assert result.ok and result.records == 12
    assert result.files == tuple(str(p) for p in order)
    assert verify(order).ok


def test_tampering_inside_a_rotated_file_is_caught(tmp_path: Path) -> None:
    path = rotated(tmp_path)
    second = tmp_path / "audit.log.2"
    content = second.read_bytes().splitlines(keepends=True)
    target = json.loads(content[1])
    content[1] = content[1].replace(b"user:alice", b"user:alicf")
    second.write_bytes(b"".join(content))
    result = verify([path])
    assert not result.ok
    assert (result.problem, result.file, result.line) == ("changed", str(second), 2)
    assert result.seq == target["seq"]


def test_a_missing_rotated_file_is_caught(tmp_path: Path) -> None:
    path = rotated(tmp_path)
    missing = tmp_path / "audit.log.2"
    first_lost = json.loads(missing.read_bytes().splitlines()[0])["seq"]
    missing.unlink()
    result = verify([path])
    assert result.problem == "missing"
    assert result.file == str(tmp_path / "audit.log.3")
    assert result.seq is not None and result.seq > first_lost


def test_rotation_continues_after_a_crash_between_rename_and_first_write(
    tmp_path: Path,
) -> None:
    path = rotated(tmp_path)
    newest = sorted(tmp_path.glob("audit.log.*"), key=lambda p: int(p.suffix[1:]))[-1]
    path.unlink()
    last = lines(newest)[-1]
    with AuditWriter(path, max_bytes=1500) as writer:
        record = statement(writer)
    assert (record["seq"], record["prev"]) == (last["seq"] + 1, last["hash"])
    assert verify([path]).ok


def test_writer_reports_its_path_and_state(tmp_path: Path) -> None:
    with AuditWriter(tmp_path / "audit.log") as writer:
        assert (writer.seq, writer.last_hash) == (0, ZERO_HASH)
        record = statement(writer)
        assert (writer.seq, writer.last_hash) == (1, record["hash"])
        assert writer.path == tmp_path / "audit.log"


def test_invalid_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AuditWriter(tmp_path / "a.log", fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AuditWriter(tmp_path / "b.log", max_bytes=-1)
