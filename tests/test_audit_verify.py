"""verify(): an intact trail passes; every kind of tampering names the first bad record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steward_proxy.audit import ZERO_HASH, AuditWriter, record_hash, record_line, verify
from steward_proxy.audit.record import EARLIER_FIELDS

N = 8


def write_trail(path: Path, records: int = N) -> list[bytes]:
    with AuditWriter(path, fsync="never") as writer:
        for n in range(records):
            writer.write(
                "statement",
                session="s-1",
                identity="user:alice",
                client="10.0.0.7:51000",
                application="billing",
                backend_pid=4242,
                command="UPDATE",
                statement=f"UPDATE t SET a = $1 WHERE id = $2 -- {n}",
                decision="allow",
                rows=n,
                duration_ms=1.5,
            )
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture
def trail(tmp_path: Path) -> tuple[Path, list[bytes]]:
    path = tmp_path / "audit.log"
    return path, write_trail(path)


def save(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def forged(after: dict[str, Any], **changes: Any) -> bytes:
    """A record with a correct self-hash, as someone who can edit the file would make it."""
    record = dict(after)
    record.update(changes)
    record["hash"] = record_hash(record)
    return record_line(record)


def parsed(line: bytes) -> dict[str, Any]:
    return json.loads(line)


def check(path: Path, problem: str, line: int, seq: int | None) -> None:
    result = verify([path])
    assert not result.ok, result
    assert (result.problem, result.file, result.line, result.seq) == (
        problem,
        str(path),
        line,
        seq,
    ), result.message
    assert result.message


def test_intact_trail(trail: tuple[Path, list[bytes]]) -> None:
    path, lines = trail
    result = verify([path])
    assert result.ok
    assert result.records == N
    assert (result.first_seq, result.last_seq) == (1, N)
    assert result.last_hash == parsed(lines[-1])["hash"]
    assert result.problem is None and result.file is None and result.line is None


def test_empty_file_is_an_empty_trail(tmp_path: Path) -> None:
    path = save(tmp_path / "audit.log", [])
    result = verify([path])
    assert result.ok and result.records == 0


@pytest.mark.parametrize("k", range(1, N + 1), ids=lambda k: f"record {k}")
def test_one_changed_byte_is_changed_at_that_record(
    trail: tuple[Path, list[bytes]], k: int
) -> None:
    path, lines = trail
    lines[k - 1] = lines[k - 1].replace(b"user:alice", b"user:alicf")
    check(save(path, lines), "changed", k, k)


@pytest.mark.parametrize("k", range(1, N + 1), ids=lambda k: f"record {k}")
def test_changed_hash_field_is_changed_at_that_record(
    trail: tuple[Path, list[bytes]], k: int
) -> None:
    path, lines = trail
    digest = parsed(lines[k - 1])["hash"]
    flipped = ("1" if digest[10] == "0" else "0").join((digest[:10], digest[11:]))
    lines[k - 1] = lines[k - 1].replace(digest.encode(), flipped.encode())
    check(save(path, lines), "changed", k, k)


@pytest.mark.parametrize("k", range(1, N), ids=lambda k: f"record {k}")
def test_changed_and_rehashed_record_is_changed_at_that_record(
    trail: tuple[Path, list[bytes]], k: int
) -> None:
    path, lines = trail
    lines[k - 1] = forged(parsed(lines[k - 1]), decision="deny")
    check(save(path, lines), "changed", k, k)


def test_non_canonical_line_is_changed(trail: tuple[Path, list[bytes]]) -> None:
    path, lines = trail
    lines[2] = lines[2].replace(b'"seq":3,', b'"seq": 3,')
    check(save(path, lines), "changed", 3, 3)


@pytest.mark.parametrize("k", range(2, N), ids=lambda k: f"record {k}")
def test_deleted_line_is_missing_at_the_record_after_the_gap(
    trail: tuple[Path, list[bytes]], k: int
) -> None:
    path, lines = trail
    del lines[k - 1]
    check(save(path, lines), "missing", k, k + 1)


def test_several_deleted_lines_are_one_gap(trail: tuple[Path, list[bytes]]) -> None:
    path, lines = trail
    del lines[2:5]
    check(save(path, lines), "missing", 3, 6)
    assert "3 record(s) missing" in verify([path]).message


def test_deleting_the_first_line_shows_where_the_chain_starts(
    trail: tuple[Path, list[bytes]],
) -> None:
    path, lines = trail
    save(path, lines[1:])
    result = verify([path])
    assert result.ok and result.first_seq == 2
    assert "starts at seq 2" in result.message
    strict = verify([path], require_start=True)
    assert (strict.ok, strict.problem, strict.line, strict.seq) == (False, "missing", 1, 2)


def test_deleting_the_last_line_cannot_be_seen_but_the_last_hash_changes(
    trail: tuple[Path, list[bytes]],
) -> None:
    path, lines = trail
    full = verify([path])
    save(path, lines[:-1])
    result = verify([path])
    assert result.ok and result.records == N - 1
    assert result.last_hash != full.last_hash


@pytest.mark.parametrize("k", range(1, N), ids=lambda k: f"records {k} and {k + 1}")
def test_swapped_lines_are_reordered_at_the_first_swapped_record(
    trail: tuple[Path, list[bytes]], k: int
) -> None:
    path, lines = trail
    lines[k - 1], lines[k] = lines[k], lines[k - 1]
    check(save(path, lines), "reordered", k, k + 1)


@pytest.mark.parametrize(
    ("source", "target"),
    [(2, 6), (6, 2), (1, N), (N, 1)],
    ids=lambda v: str(v),
)
def test_moved_line_is_reordered_at_the_first_out_of_place_line(
    trail: tuple[Path, list[bytes]], source: int, target: int
) -> None:
    path, lines = trail
    moved = lines.pop(source - 1)
    lines.insert(target - 1, moved)
    first_bad = min(source, target)
    check(save(path, lines), "reordered", first_bad, parsed(lines[first_bad - 1])["seq"])


@pytest.mark.parametrize("k", range(1, N + 1), ids=lambda k: f"before record {k}")
def test_inserted_fork_with_correct_hashes_is_inserted(
    trail: tuple[Path, list[bytes]], k: int
) -> None:
    path, lines = trail
    # Same seq and prev as the real record k, so it links to its predecessor.
    lines.insert(k - 1, forged(parsed(lines[k - 1]), identity="user:mallory"))
    check(save(path, lines), "inserted", k, k)


@pytest.mark.parametrize("k", range(2, N + 1), ids=lambda k: f"before record {k}")
def test_inserted_line_with_a_made_up_link_is_inserted(
    trail: tuple[Path, list[bytes]], k: int
) -> None:
    path, lines = trail
    line = forged(parsed(lines[k - 1]), seq=k, prev="ab" * 32, rows=999)
    lines.insert(k - 1, line)
    check(save(path, lines), "inserted", k, k)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(lambda lines: lines[1], id="a copy of an earlier record"),
        pytest.param(lambda lines: lines[6], id="a copy of a later record"),
        pytest.param(
            lambda lines: lines[3].replace(b"alice", b"bobby"), id="a record with a bad hash"
        ),
        pytest.param(lambda lines: b"hello\n", id="a line that is not JSON"),
        pytest.param(lambda lines: b"\n", id="an empty line"),
    ],
)
def test_inserted_lines_of_every_kind(trail: tuple[Path, list[bytes]], extra: Any) -> None:
    path, lines = trail
    lines.insert(4, extra(lines))
    result = verify([save(path, lines)])
    assert (result.ok, result.problem, result.line) == (False, "inserted", 5), result.message


def test_two_inserted_forgeries_name_the_first(trail: tuple[Path, list[bytes]]) -> None:
    path, lines = trail
    a = forged(parsed(lines[3]), seq=40, prev="cd" * 32)
    b = forged(parsed(lines[3]), seq=41, prev=parsed(a)["hash"])
    lines[3:3] = [a, b]
    check(save(path, lines), "inserted", 4, 40)


def test_truncated_last_line_is_malformed(trail: tuple[Path, list[bytes]]) -> None:
    path, lines = trail
    lines[-1] = lines[-1][:50]
    check(save(path, lines), "malformed", N, None)
    assert "incomplete" in verify([path]).message


def test_missing_final_newline_is_malformed(trail: tuple[Path, list[bytes]]) -> None:
    path, lines = trail
    lines[-1] = lines[-1].rstrip(b"\n")
    check(save(path, lines), "malformed", N, None)


@pytest.mark.parametrize(
    ("mangle", "detail"),
    [
        pytest.param(lambda line: line[:-3] + b"\n", "not valid JSON", id="broken JSON"),
        pytest.param(lambda line: b"[1, 2]\n", "not a JSON object", id="a JSON array"),
        pytest.param(lambda line: b"\xff\xfe\n", "not UTF-8", id="binary garbage"),
        pytest.param(lambda line: line.replace(b'"rows"', b'"rowz"'), "fields", id="a renamed key"),
        pytest.param(
            lambda line: line.replace(b'"seq":5', b'"seq":"5"'), "seq", id="seq as a string"
        ),
    ],
)
def test_malformed_middle_line(trail: tuple[Path, list[bytes]], mangle: Any, detail: str) -> None:
    path, lines = trail
    lines[4] = mangle(lines[4])
    result = verify([save(path, lines)])
    assert (result.ok, result.problem, result.line) == (False, "malformed", 5), result.message
    assert detail in result.message


def test_first_record_must_chain_from_zeros(trail: tuple[Path, list[bytes]]) -> None:
    path, lines = trail
    lines[0] = forged(parsed(lines[0]), prev="12" * 32)
    check(save(path, lines), "changed", 1, 1)


def test_several_files_are_one_chain_in_the_given_order(tmp_path: Path) -> None:
    lines = write_trail(tmp_path / "source.log")
    first = save(tmp_path / "part1.log", lines[:3])
    second = save(tmp_path / "part2.log", lines[3:])
    assert verify([first, second]).ok
    result = verify([second, first])
    assert not result.ok and result.problem == "reordered"
    later = verify([second])
    assert later.ok and later.first_seq == 4 and "starts at seq 4" in later.message


def test_a_later_file_alone_still_catches_tampering(tmp_path: Path) -> None:
    lines = write_trail(tmp_path / "source.log")
    part = lines[3:]
    del part[2]
    path = save(tmp_path / "part.log", part)
    result = verify([path])
    assert (result.problem, result.line, result.seq) == ("missing", 3, 7)


def in_earlier_layout(lines: list[bytes]) -> list[bytes]:
    """The same trail as versions before ``application`` and ``backend_pid`` wrote it."""
    out, prev = [], ZERO_HASH
    for line in lines:
        record = {k: v for k, v in parsed(line).items() if k in EARLIER_FIELDS}
        record["prev"] = prev
        record["hash"] = prev = record_hash(record)
        out.append(record_line(record))
    return out


def test_a_trail_of_the_earlier_layout_still_verifies(tmp_path: Path) -> None:
    lines = in_earlier_layout(write_trail(tmp_path / "source.log"))
    assert b"backend_pid" not in b"".join(lines)
    result = verify([save(tmp_path / "audit.log", lines)])
    assert result.ok and result.records == N, result.message


def test_tampering_in_the_earlier_layout_is_caught(tmp_path: Path) -> None:
    lines = in_earlier_layout(write_trail(tmp_path / "source.log"))
    lines[3] = lines[3].replace(b"user:alice", b"user:alicf")
    check(save(tmp_path / "audit.log", lines), "changed", 4, 4)


def test_a_record_with_only_one_of_the_new_fields_is_malformed(
    trail: tuple[Path, list[bytes]],
) -> None:
    path, lines = trail
    record = parsed(lines[2])
    del record["application"]
    lines[2] = forged(record)
    result = verify([save(path, lines)])
    assert (result.problem, result.line) == ("malformed", 3), result.message


def test_unreadable_file(tmp_path: Path) -> None:
    result = verify([tmp_path / "nope.log"])
    assert (result.ok, result.problem) == (False, "unreadable")
    assert "nope.log" in result.message


def test_records_counts_intact_records_before_the_problem(
    trail: tuple[Path, list[bytes]],
) -> None:
    path, lines = trail
    lines[5] = lines[5].replace(b"user:alice", b"user:alicf")
    result = verify([save(path, lines)])
    assert result.records == 5
    assert result.last_seq == 5


@st.composite
def mutations(draw: st.DrawFn, size: int) -> tuple[str, int, int, bytes]:
    kind = draw(st.sampled_from(["replace", "insert", "delete", "swap-lines", "truncate"]))
    at = draw(st.integers(0, size - 1))
    length = draw(st.integers(1, 64))
    data = draw(st.binary(min_size=1, max_size=64))
    return kind, at, length, data


def mutate(raw: bytes, mutation: tuple[str, int, int, bytes]) -> bytes:
    kind, at, length, data = mutation
    if kind == "replace":
        return raw[:at] + data + raw[at + len(data) :]
    if kind == "insert":
        return raw[:at] + data + raw[at:]
    if kind == "delete":
        return raw[:at] + raw[at + length :]
    if kind == "swap-lines":
        lines = raw.splitlines(keepends=True)
        i = at % len(lines)
        j = (i + length) % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
        return b"".join(lines)
    return raw[:at]


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_verify_never_raises_on_mutated_trails(
    trail: tuple[Path, list[bytes]], data: st.DataObject
) -> None:
    path, lines = trail
    raw = b"".join(lines)
    steps = data.draw(st.lists(mutations(len(raw)), min_size=1, max_size=3))
    mutated = raw
    for step in steps:
        mutated = mutate(mutated, step) if mutated else mutated
    target = path.with_name("mutated.log")
    target.write_bytes(mutated)
    result = verify([target])
    assert isinstance(result.ok, bool)
    assert result.ok or (result.problem and result.line and result.message)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_any_single_byte_change_is_detected(
    trail: tuple[Path, list[bytes]], position: int, byte: int
) -> None:
    path, lines = trail
    raw = bytearray(b"".join(lines))
    position %= len(raw)
    if raw[position] == byte:
        byte ^= 1
    raw[position] = byte
    target = path.with_name("flipped.log")
    target.write_bytes(bytes(raw))
    result = verify([target])
    assert not result.ok
    # The first bad record is at or before the changed one.
    changed_line = bytes(raw[:position]).count(b"\n") + 1
    assert result.line is not None and result.line <= changed_line + 1
