"""``AuditWriter``: appends hash-chained records to a local file (the disk spool).

One ``write()`` per record: the record is built in field order, hashed over
its canonical JSON, and appended to the file with a single ``os.write`` on an
``O_APPEND`` descriptor, so it reaches the OS before ``write`` returns.
Durability follows ``fsync``: ``"always"`` syncs every record, ``"interval"``
at most every ``fsync_interval`` seconds (checked on each write, plus
:meth:`AuditWriter.sync` for a periodic timer), ``"never"`` leaves it to the OS.

Fail closed: any ``OSError`` becomes :class:`AuditWriteError` so the caller can
refuse the statement, and a record that was not written does not advance the
chain (a partly written line is cut off again). If the file cannot be put back
into a known state the writer refuses all further records until reopened.

Opening an existing trail continues its chain from the last line. A torn last
line (no ``\\n``, left by a crash or a full disk) is not repaired silently:
opening raises :class:`AuditWriteError` naming the file and the offset where
the complete records end, so an operator can inspect the fragment and cut it
off (``truncate -s OFFSET FILE``) before the writer starts again.

Rotation (``max_bytes > 0``): when the next record would make the file larger
than ``max_bytes``, the file is synced, closed and renamed to the next free
numbered sibling: ``audit.log.1`` is the oldest, higher numbers are newer, and
the live ``audit.log`` is the newest of all. The chain (``seq`` and ``prev``)
continues in a fresh ``audit.log``. Old files are never renamed again, so an
external retention job may delete the lowest numbers.

One process writes one trail: the file is locked (``flock``) while open.
Not thread-safe; the proxy calls it from its single event loop thread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from steward_proxy.audit.record import (
    AUDIT_FIELDS,
    RECORD_LAYOUTS,
    ZERO_HASH,
    check_finite,
    format_time,
    record_hash,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["AuditWriteError", "AuditWriter", "FsyncMode", "rotated_siblings"]

FsyncMode = Literal["always", "interval", "never"]

_SETTABLE = frozenset(AUDIT_FIELDS) - {"seq", "time", "type", "prev", "hash"}
# Record without seq/time/type/prev/hash; those are filled in by write().
_TEMPLATE: dict[str, Any] = {
    name: None for name in AUDIT_FIELDS if name not in ("seq", "time", "type", "prev", "hash")
}
_TAIL_CHUNK = 65536


class AuditSink(Protocol):
    """Where a proxy writes audit records (an :class:`AuditWriter`, or a test's list)."""

    def write(self, type: str, **fields: Any) -> dict[str, Any]: ...

    def write_many(
        self, records: Iterable[tuple[str, Mapping[str, Any]]]
    ) -> list[dict[str, Any]]: ...


class AuditWriteError(Exception):
    """The audit trail could not be written; the action it records must not proceed."""


def rotated_siblings(path: str | os.PathLike[str]) -> list[Path]:
    """Rotated files of the trail at ``path`` (``path.1``, ``path.2``, ...), oldest first."""
    base = Path(path)
    numbered = []
    try:
        entries = list(base.parent.iterdir())
    except OSError:
        return []
    prefix = base.name + "."
    for entry in entries:
        suffix = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
        if suffix.isascii() and suffix.isdigit():
            numbered.append((int(suffix), entry))
    return [entry for _, entry in sorted(numbered)]


def _datasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError as exc:
        # EINVAL: a pipe or character device (e.g. /dev/stdout) has nothing to sync.
        if exc.errno != errno.EINVAL:
            raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory descriptors
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_last_line(fd: int, size: int, name: str) -> bytes:
    """The last complete line of an open file of ``size`` bytes (without its ``\\n``)."""
    if size == 0:
        return b""
    last = os.pread(fd, 1, size - 1)
    if last != b"\n":
        end = size
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            chunk = os.pread(fd, end - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        raise AuditWriteError(
            f"{name}: the last line is incomplete (torn write); complete records end at byte "
            f"{end}. Inspect the fragment, then cut it off (truncate -s {end} {name}) "
            "to continue the trail"
        )
    end = size - 1
    pieces: list[bytes] = []
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            pieces.append(chunk[cut + 1 :])
            break
        pieces.append(chunk)
        end = start
    return b"".join(reversed(pieces))


def _chain_state(line: bytes, name: str) -> tuple[int, str]:
    """``(seq, hash)`` of a stored record line, refusing anything not a sound record."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise AuditWriteError(f"{name}: the last record is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or tuple(record) not in RECORD_LAYOUTS:
        raise AuditWriteError(f"{name}: the last line is not an audit record")
    seq, digest = record["seq"], record["hash"]
    if type(seq) is not int or seq < 1 or not isinstance(digest, str):
        raise AuditWriteError(f"{name}: the last record has an invalid seq or hash")
    if record_hash(record) != digest:
        raise AuditWriteError(
            f"{name}: the last record's hash does not match its content; "
            "run `steward audit verify` before writing to this trail"
        )
    return seq, digest


class AuditWriter:
    """Appends hash-chained audit records to ``path`` (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncMode = "interval",
        fsync_interval: float = 1.0,
        max_bytes: int = 0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be 'always', 'interval' or 'never', not {fsync!r}")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.path = Path(path)
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.max_bytes = max_bytes
        self._clock = clock
        self._fd = -1
        self._size = 0
        self._seq = 0
        self._prev = ZERO_HASH
        self._broken: str | None = None
        self._last_sync = time.monotonic()
        self._unsynced = False
        self._second = -1
        self._second_text = ""
        self._open()

    # --- state -------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """Sequence number of the last record in the trail (0 when empty)."""
        return self._seq

    @property
    def last_hash(self) -> str:
        """Hash of the last record in the trail (:data:`ZERO_HASH` when empty)."""
        return self._prev

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or rotation could not reopen the file)."""
        return self._fd < 0

    def _open(self) -> None:
        """Open (or create) the live file and load the chain state from the trail."""
        name = str(self.path)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit trail {name}: {exc}") from exc
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    raise AuditWriteError(
                        f"audit trail {name} is already open in another writer: {exc}"
                    ) from exc
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as reader:
                    line = _read_last_line(reader.fileno(), size, name)
                seq, prev = _chain_state(line, name)
            else:
                seq, prev = self._state_from_siblings()
                _fsync_dir(self.path.parent)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise AuditWriteError(f"cannot read audit trail {name}: {exc}") from exc
            raise
        self._fd, self._size, self._seq, self._prev = fd, size, seq, prev
        self._broken = None

    def _state_from_siblings(self) -> tuple[int, str]:
        # An empty live file after a rotation: the chain goes on from the newest sibling.
        siblings = rotated_siblings(self.path)
        if not siblings:
            return 0, ZERO_HASH
        newest = siblings[-1]
        fd = os.open(newest, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            line = _read_last_line(fd, size, str(newest))
        finally:
            os.close(fd)
        if not line:
            raise AuditWriteError(f"{newest}: rotated audit file is empty")
        return _chain_state(line, str(newest))

    # --- writing -----------------------------------------------------------------

    def _now(self) -> str:
        if self._clock is not None:
            return format_time(self._clock())
        ns = time.time_ns()
        second, rest = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{rest // 1000:06d}Z"

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        """Append one record of ``type`` and return it (with seq, time, prev and hash).

        ``fields`` are the record's other keys; those not given are ``null``
        (``[]`` for ``groups`` and ``masked``). Raises ``TypeError`` for an
        unknown field or a value JSON cannot hold, ``ValueError`` for NaN or
        infinity, and :class:`AuditWriteError` when the record could not be
        written, in which case the chain does not advance.
        """
        return self.write_many(((type, fields),))[0]

    def write_many(self, records: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """Append records (``(type, fields)`` each, as :meth:`write` takes) in one write.

        All or none: when the write fails the chain does not advance.
        """
        if self._broken is not None:
            raise AuditWriteError(self._broken)
        if self._fd < 0:
            raise AuditWriteError(f"audit trail {self.path} is closed")
        seq, prev, size = self._seq, self._prev, self._size
        written: list[dict[str, Any]] = []
        lines: list[bytes] = []
        now = self._now()  # one write: one moment
        for type, fields in records:
            if not _SETTABLE.issuperset(fields):
                unknown = sorted(set(fields) - _SETTABLE)
                raise TypeError(f"unknown audit record field(s): {', '.join(unknown)}")
            check_finite(fields)
            record: dict[str, Any] = {
                "seq": seq + 1, "time": now, "type": type, **_TEMPLATE, **fields
            }  # fmt: skip
            if record["groups"] is None:
                record["groups"] = []
            if record["masked"] is None:
                record["masked"] = []
            record["prev"] = prev
            digest = hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()
            record["hash"] = digest
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
            if self.max_bytes and size and size + len(line) > self.max_bytes:
                # Rotation starts a new file: what is built so far goes to the old one.
                if lines:
                    self._commit(lines, seq, prev)
                    lines = []
                self._rotate()
                size = 0
            lines.append(line)
            size += len(line)
            seq, prev = seq + 1, digest
            written.append(record)
        if lines:
            self._commit(lines, seq, prev)
        return written

    def _commit(self, lines: list[bytes], seq: int, prev: str) -> None:
        self._append(lines[0] if len(lines) == 1 else b"".join(lines))
        self._seq, self._prev = seq, prev

    def _append(self, data: bytes) -> None:
        fd, before = self._fd, self._size
        try:
            written = os.write(fd, data)
            while written < len(data):  # short write: keep going, or fail below
                written += os.write(fd, data[written:])
            if self.fsync == "always":
                _datasync(fd)
            elif self.fsync == "interval":
                self._unsynced = True
                now = time.monotonic()
                if now - self._last_sync >= self.fsync_interval:
                    _datasync(fd)
                    self._last_sync = now
                    self._unsynced = False
        except OSError as exc:
            self._undo(before)
            raise AuditWriteError(f"cannot write audit record to {self.path}: {exc}") from exc
        self._size = before + len(data)

    def _undo(self, size: int) -> None:
        """Cut the file back to ``size`` after a failed append, or stop accepting records."""
        try:
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
        except OSError as exc:
            self._broken = (
                f"audit trail {self.path} is in an unknown state after a failed write ({exc}); "
                "reopen it to continue"
            )

    def _rotate(self) -> None:
        siblings = rotated_siblings(self.path)
        number = int(siblings[-1].name.rsplit(".", 1)[1]) + 1 if siblings else 1
        target = self.path.with_name(f"{self.path.name}.{number}")
        try:
            _datasync(self._fd)
            os.rename(self.path, target)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise AuditWriteError(f"cannot rotate audit trail {self.path}: {exc}") from exc
        old_fd = self._fd
        seq, prev = self._seq, self._prev
        self._fd = -1
        os.close(old_fd)
        try:
            self._open()
        except AuditWriteError as exc:
            self._broken = f"audit trail {self.path} could not be reopened after rotation: {exc}"
            raise
        if (self._seq, self._prev) != (seq, prev):  # pragma: no cover - another writer
            self._broken = f"audit trail {self.path} changed under the writer during rotation"
            raise AuditWriteError(self._broken)
        self._last_sync = time.monotonic()

    # --- durability and shutdown -------------------------------------------------

    def sync(self) -> None:
        """Flush records not yet synced to stable storage (for a periodic timer).

        Does nothing when every record is already synced, and with ``fsync="never"``.
        """
        if self._fd < 0 or not self._unsynced:
            return
        # Safe to call from another thread: a record appended while the sync runs
        # keeps the trail marked unsynced.
        seq = self._seq
        try:
            _datasync(self._fd)
        except OSError as exc:
            raise AuditWriteError(f"cannot sync audit trail {self.path}: {exc}") from exc
        self._last_sync = time.monotonic()
        if self._seq == seq:
            self._unsynced = False

    def close(self) -> None:
        """Sync and close the file; further writes raise :class:`AuditWriteError`."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            _datasync(fd)
        except OSError as exc:
            raise AuditWriteError(f"cannot sync audit trail {self.path}: {exc}") from exc
        finally:
            os.close(fd)

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
