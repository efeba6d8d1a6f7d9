"""The shell around the review book: a SQLite store, and decisions from the admin API.

The sessions consult :attr:`ProxyServer.reviews <steward_proxy.server.ProxyServer.reviews>`
(a pure :class:`~steward_proxy.review.ReviewBook`) on the event loop; whatever
they changed is stored by :meth:`ReviewDesk.save` before the statement that
changed it goes on (an approval is marked used on disk before it runs, so a
crash cannot make it usable twice). Decisions come from the admin endpoint's
threads and are carried over to the event loop, where the book lives:
:meth:`ReviewDesk.decide_threadsafe` checks the decision, writes the
``review.decided`` audit record, stores the review, and only then applies it.

:class:`SQLiteReviewStore` keeps the reviews in one SQLite file (by default
next to the audit trail), one row per review with its fields as JSON. One
proxy uses one store: the file is locked while open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from steward_proxy.audit import AuditWriteError
from steward_proxy.escape import escape
from steward_proxy.policy import Identity
from steward_proxy.review import Review, ReviewBook, ReviewRefused, ReviewStore, State
from steward_proxy.threadsafe import call_on_loop

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from steward_proxy.server import ProxyServer

__all__ = ["STORE_NAME", "ReviewDesk", "ReviewRefused", "ReviewStoreError", "SQLiteReviewStore"]

log = logging.getLogger("steward.review")

STORE_NAME = "steward-reviews.sqlite3"
"""The store's file name when ``--review-store`` is not given: next to the audit trail."""

T = TypeVar("T")


class ReviewStoreError(Exception):
    """The review store cannot be opened, read or written."""


class SQLiteReviewStore:
    """Reviews in a SQLite file; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            # Created private; the lock keeps a second proxy from sharing the book.
            self._lock_fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ReviewStoreError(f"cannot open review store {self.path}: {exc}") from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ReviewStoreError(
                        f"review store {self.path} is in use by another proxy"
                    ) from None
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS reviews (id TEXT PRIMARY KEY, body TEXT NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            os.close(self._lock_fd)
            raise ReviewStoreError(f"cannot open review store {self.path}: {exc}") from None
        except ReviewStoreError:
            os.close(self._lock_fd)
            raise

    def load(self) -> list[Review]:
        try:
            rows = self._db.execute("SELECT id, body FROM reviews").fetchall()
        except sqlite3.Error as exc:
            raise ReviewStoreError(f"cannot read review store {self.path}: {exc}") from None
        reviews = []
        for review_id, body in rows:
            try:
                reviews.append(Review.from_record(json.loads(body)))
            except (ValueError, TypeError) as exc:
                raise ReviewStoreError(
                    f"review store {self.path}: review {escape(str(review_id), 64)} "
                    f"cannot be read: {exc}"
                ) from None
        return reviews

    def save(self, changed: Sequence[Review], removed: Sequence[str]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO reviews (id, body) VALUES (?, ?)",
                    [(r.id, json.dumps(r.to_record())) for r in changed],
                )
                db.executemany("DELETE FROM reviews WHERE id = ?", [(i,) for i in removed])
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ReviewStoreError(f"cannot write review store {self.path}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


class ReviewDesk:
    """Persists a server's review book and takes decisions on it; see the module docstring."""

    def __init__(self, server: ProxyServer, store: ReviewStore | None = None) -> None:
        self.server = server
        self.store = store

    def attach(self, store: ReviewStore, **book: Any) -> int:
        """Use ``store`` from now on, with the reviews it holds; returns how many.

        Call before the proxy serves: sessions keep the book they start with.
        """
        reviews = store.load()
        self.server.reviews = ReviewBook(reviews, **book)
        self.store = store
        return len(reviews)

    # -- on the event loop ------------------------------------------------------------

    def save(self) -> bool:
        """Store what the book changed; False (logged) when the store cannot be written."""
        changed, removed = self.server.reviews.take_changes()
        if self.store is None or not (changed or removed):
            return True
        try:
            self.store.save(changed, removed)
        except ReviewStoreError as exc:
            log.error("%s", exc)
            self.server.metrics.error("review_store")
            return False
        return True

    def decide(
        self,
        review_id: str,
        *,
        approve: bool,
        approver: Identity,
        reason: str | None,
        client: str,
    ) -> Review:
        """Approve or deny: check, audit, store, apply. Raises :class:`ReviewRefused`."""
        server = self.server
        book = server.reviews
        if not self.save():
            raise ReviewStoreError("the review store cannot be written")
        found = book.get(review_id)
        policy = None
        if found is not None:
            policy = next((p for p in server.policies.policies if p.key == found.policy), None)
        try:
            decided = book.decision(
                review_id, approve=approve, approver=approver, policy=policy, reason=reason
            )
        finally:
            self.save()  # a review found expired on the way
        fields = dict(
            identity=escape(approver.subject),
            groups=[escape(g) for g in approver.groups],
            database=decided.database,
            client=client,
            command=decided.command,
            statement=decided.statement,
            fingerprint=decided.fingerprint,
            decision="allow" if approve else "deny",
            policy=decided.policy,
            rule=decided.rule,
            error=f"review {decided.id} of {decided.subject} {decided.state}"
            + (f": {decided.reason}" if decided.reason else ""),
        )
        try:
            server.audit.write("review.decided", **fields)
        except AuditWriteError as exc:
            server.audit_failure(exc)
            raise
        if self.store is not None:
            self.store.save([decided], [])
        book.apply(decided)
        book.take_changes()  # stored above
        log.info(
            "review %s of %s %s by %s",
            decided.id,
            decided.subject,
            decided.state,
            escape(approver.subject),
        )
        return decided

    # -- from the admin endpoint's threads ------------------------------------------------

    def list_threadsafe(self, state: State | None = None) -> list[Review]:
        return self._on_loop(lambda: self._saved(self.server.reviews.list(state)))

    def get_threadsafe(self, review_id: str) -> Review | None:
        return self._on_loop(lambda: self._saved(self.server.reviews.get(review_id)))

    def decide_threadsafe(
        self,
        review_id: str,
        *,
        approve: bool,
        approver: Identity,
        reason: str | None,
        client: str,
    ) -> Review:
        """:meth:`decide` on the event loop; raises what it raises."""
        return self._on_loop(
            lambda: self.decide(
                review_id, approve=approve, approver=approver, reason=reason, client=client
            )
        )

    def _saved(self, value: T) -> T:
        self.save()  # reading may have found reviews expired
        return value

    def _on_loop(self, call: Callable[[], T]) -> T:
        return call_on_loop(self.server.loop, call)
