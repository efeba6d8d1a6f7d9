"""Verify an audit trail: recompute every hash and link, name the first bad record.

Each line must be the exact serialization of a record (field order, compact
JSON, ``\\n``-terminated) whose ``hash`` matches its content; each record must
have ``seq`` one more than the record before it and ``prev`` equal to that
record's ``hash``. The first record of a trail has ``seq`` 1 and ``prev`` all
zeros. A trail whose first available record has a higher ``seq`` (older
rotated files were removed) is verified from there, and the result says where
it starts.

When the chain breaks, the records around the break and the rest of the files
decide what happened, and the first bad record in file order is named:

- ``changed``: the record's hash does not match its content, or it is not in
  canonical form, or (content and hash both rewritten) the next record does
  not chain to its hash;
- ``missing``: records are gone before this one (``seq`` jumps, ``prev`` does
  not link);
- ``inserted``: the record is not part of the chain (the chain goes on
  without it), even if its own hash is right;
- ``reordered``: the record belongs elsewhere in the chain (its predecessor,
  or the record that should be here, comes later);
- ``malformed``: the line is not a record at all (not UTF-8, not JSON, wrong
  fields, an incomplete last line).

Only appending well-formed records at the end cannot be told from a longer
trail, and dropping the newest records from the end cannot be told from a
shorter one; keep the last hash (printed by ``steward audit verify``)
somewhere else to anchor the trail.

Given one path, its rotated siblings (``path.1``, ``path.2``, ...; higher is
newer) are verified before it, in that order. Several paths are read in the
order given.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from steward_proxy.audit.record import RECORD_LAYOUTS, ZERO_HASH, record_hash, record_line
from steward_proxy.audit.writer import rotated_siblings

__all__ = ["VerifyResult", "trail_files", "verify"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    ``records`` counts the intact records read before the first problem (all of
    them when ``ok``). ``file``, ``line`` (1-based, within ``file``) and ``seq``
    locate the first bad record; ``problem`` is one of ``changed``, ``missing``,
    ``inserted``, ``reordered``, ``malformed`` or ``unreadable`` (a file could
    not be read). ``first_seq``/``last_seq``/``last_hash`` describe the intact
    chain that was read.
    """

    ok: bool
    records: int
    file: str | None
    line: int | None
    seq: int | None
    problem: str | None
    message: str
    files: tuple[str, ...] = ()
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None


@dataclass(slots=True)
class _Entry:
    file: str
    line: int
    seq: int
    prev: str
    hash: str
    problem: str | None = None
    detail: str = ""


_GENESIS = _Entry(file="", line=0, seq=0, prev="", hash=ZERO_HASH)


class _Unreadable(Exception):
    def __init__(self, file: str, error: OSError) -> None:
        super().__init__(file, error)
        self.file = file
        self.error = error


def trail_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files :func:`verify` reads for ``paths``, in chain order."""
    files = [Path(path) for path in paths]
    if len(files) == 1:
        siblings = rotated_siblings(files[0])
        if siblings:
            return siblings + ([files[0]] if os.path.lexists(files[0]) else [])
    return files


def _links(before: _Entry | None, after: _Entry | None) -> bool:
    return (
        before is not None
        and after is not None
        and after.problem is None
        and before.problem is None
        and after.seq == before.seq + 1
        and after.prev == before.hash
    )


def _malformed(file: str, line: int, detail: str) -> _Entry:
    return _Entry(file, line, 0, "", "", problem="malformed", detail=detail)


def _parse(file: str, line: int, raw: bytes) -> _Entry:
    if not raw.endswith(b"\n"):
        return _malformed(file, line, "the last line is incomplete (torn write or truncated file)")
    try:
        record = json.loads(raw[:-1].decode("utf-8"))
    except UnicodeDecodeError:
        return _malformed(file, line, "the line is not UTF-8")
    except (ValueError, RecursionError):
        return _malformed(file, line, "the line is not valid JSON")
    if not isinstance(record, dict):
        return _malformed(file, line, "the line is not a JSON object")
    if tuple(record) not in RECORD_LAYOUTS:
        return _malformed(file, line, "its fields are not those of an audit record, in order")
    seq, prev, digest = record["seq"], record["prev"], record["hash"]
    if type(seq) is not int or seq < 1:
        return _malformed(file, line, "seq is not a positive integer")
    if not (isinstance(prev, str) and _HEX64.fullmatch(prev)):
        return _malformed(file, line, "prev is not a SHA-256 hex digest")
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        return _malformed(file, line, "hash is not a SHA-256 hex digest")
    entry = _Entry(file, line, seq, prev, digest)
    try:
        computed = record_hash(record)
        canonical = record_line(record) == raw
    except ValueError:
        computed, canonical = "", False
    if computed != digest:
        entry.problem, entry.detail = "changed", "hash does not match its content"
    elif not canonical:
        entry.problem = "changed"
        entry.detail = "the line is not the canonical serialization of its content"
    return entry


def _entries(files: Sequence[Path]) -> Iterator[_Entry]:
    for path in files:
        name = str(path)
        try:
            with open(path, "rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    yield _parse(name, number, raw)
        except OSError as exc:
            raise _Unreadable(name, exc) from exc


def verify(paths: Sequence[str | os.PathLike[str]], *, require_start: bool = False) -> VerifyResult:
    """Verify the audit trail in ``paths`` (see the module docstring); never raises on content.

    With ``require_start`` the files must hold the trail from its first record
    (``seq`` 1); otherwise a trail starting later is accepted and reported.
    """
    files = trail_files(paths)
    names = tuple(str(path) for path in files)
    try:
        return _Walk(names, require_start).run(_entries(files))
    except _Unreadable as exc:
        reason = exc.error.strerror or str(exc.error)
        return VerifyResult(
            ok=False,
            records=0,
            file=exc.file,
            line=None,
            seq=None,
            problem="unreadable",
            message=f"cannot read {exc.file}: {reason}",
            files=names,
        )


class _Walk:
    """One pass over the entries, keeping the last two intact records."""

    def __init__(self, names: tuple[str, ...], require_start: bool) -> None:
        self.names = names
        self.require_start = require_start
        self.count = 0
        self.first: _Entry | None = None  # first intact record read
        self.before: _Entry | None = None  # last intact record (or the genesis)
        self.before2: _Entry | None = None  # the one before it, when known

    def run(self, entries: Iterator[_Entry]) -> VerifyResult:
        for entry in entries:
            if self.before is None:
                if entry.problem is None and entry.seq > 1:
                    if self.require_start:
                        return self.fail(
                            entry,
                            "missing",
                            f"the trail does not start at seq 1: {entry.seq - 1} earlier "
                            "record(s) missing",
                        )
                    self.first = self.before = entry
                    self.count = 1
                    continue
                self.before = _GENESIS
            if entry.problem is None and _links(self.before, entry):
                if self.first is None:
                    self.first = entry
                self.before2, self.before = self.before, entry
                self.count += 1
                continue
            return self.diagnose(entry, entries)
        return self.intact()

    def intact(self) -> VerifyResult:
        last, first = self.before, self.first
        if last is None or last is _GENESIS or first is None:
            return VerifyResult(True, 0, None, None, None, None, "no records", files=self.names)
        message = "chain intact"
        if first.seq > 1:
            message += f"; it starts at seq {first.seq} (earlier records are not in these files)"
        return VerifyResult(
            ok=True,
            records=self.count,
            file=None,
            line=None,
            seq=None,
            problem=None,
            message=message,
            files=self.names,
            first_seq=first.seq,
            last_seq=last.seq,
            last_hash=last.hash,
        )

    def fail(self, entry: _Entry, problem: str, message: str) -> VerifyResult:
        intact = self.before
        count = self.count
        if entry is intact:  # the last record taken as intact is the bad one
            intact, count = self.before2, count - 1
        known = intact is not None and intact is not _GENESIS
        return VerifyResult(
            ok=False,
            records=count,
            file=entry.file,
            line=entry.line,
            seq=entry.seq or None,
            problem=problem,
            message=message,
            files=self.names,
            first_seq=self.first.seq if self.first is not None and known else None,
            last_seq=intact.seq if known and intact is not None else None,
            last_hash=intact.hash if known and intact is not None else None,
        )

    def diagnose(self, entry: _Entry, rest: Iterator[_Entry]) -> VerifyResult:
        """Name the first bad record at a break between ``self.before`` and ``entry``."""
        before, before2 = self.before, self.before2
        assert before is not None
        following: _Entry | None = None
        successor_later = predecessor_later = duplicate_later = False
        for later in rest:
            if following is None:
                following = later
            if later.problem is None:
                successor_later = successor_later or _links(before, later)
                predecessor_later = predecessor_later or _links(later, entry)
                duplicate_later = duplicate_later or later.hash == entry.hash

        if entry.problem is not None:
            if _links(before, following):
                what = "not an audit record" if entry.problem == "malformed" else entry.detail
                return self.fail(
                    entry, "inserted", f"line inserted: it is not part of the chain ({what})"
                )
            if entry.problem == "malformed":
                return self.fail(entry, "malformed", f"malformed record: {entry.detail}")
            return self.fail(entry, "changed", f"record changed: {entry.detail}")

        first = self.first
        if first is not None and first.seq > 1 and _links(_GENESIS, entry):
            return self.fail(
                first,
                "reordered",
                "records reordered: the first record of the trail (seq 1) comes later",
            )
        if before is not _GENESIS and _links(before2, entry):
            return self.fail(
                before,
                "inserted",
                f"record inserted: the chain goes on from seq {entry.seq - 1} to the next "
                "record without it",
            )
        if predecessor_later and not duplicate_later:
            return self.fail(
                entry,
                "reordered",
                f"records reordered: seq {entry.seq} comes before the record it follows",
            )
        if _links(before, following) or successor_later:
            return self.fail(
                entry,
                "inserted",
                f"record inserted: it does not continue the chain after seq {before.seq}, "
                "which goes on at a later line",
            )
        if before is _GENESIS:
            return self.fail(
                entry, "changed", "record changed: the first record's prev is not all zeros"
            )
        if entry.seq > before.seq + 1:
            gap = entry.seq - before.seq - 1
            return self.fail(
                entry,
                "missing",
                f"{gap} record(s) missing before this record: seq jumps from {before.seq} "
                f"to {entry.seq}",
            )
        if entry.seq == before.seq + 1:
            return self.fail(
                before,
                "changed",
                f"record changed: the next record (seq {entry.seq}) chains to a different hash",
            )
        return self.fail(
            entry,
            "inserted",
            f"record inserted: seq {entry.seq} does not continue the chain after seq {before.seq}",
        )
