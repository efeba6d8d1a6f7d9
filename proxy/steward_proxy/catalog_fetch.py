"""The shell side of masking's catalog: fetch it over its own upstream connection, keep it fresh.

:class:`CatalogKeeper` runs :data:`steward_proxy.masking.catalog.QUERIES`
with pg8000 (in a thread, off the event loop) as the proxy's upstream role,
builds a :class:`~steward_proxy.masking.catalog.Catalog` and hands it to
every :class:`~steward_proxy.masking.plan.Masker` it keeps. It loads on
first need (a session of a masked subject signs in), again when a session
reports DDL (``Masker.invalidate``) and every ``ttl`` seconds. Until a load
succeeds, masking resolves nothing and masks every column a rule could cover
(fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

from steward_proxy.escape import escape
from steward_proxy.masking.catalog import QUERIES, Catalog
from steward_proxy.masking.plan import Masker
from steward_proxy.upstream import UpstreamTarget

log = logging.getLogger("steward.proxy")

__all__ = ["CatalogKeeper", "fetch_rows"]


def fetch_rows(target: UpstreamTarget, timeout: float) -> dict[str, list[Any]]:
    """The rows of each catalog query, over a new connection (blocking)."""
    import pg8000.native

    context = target.ssl_context()
    attempts: list[Any] = [context]
    if target.sslmode in ("prefer", "allow"):
        attempts.append(None)
    last: Exception | None = None
    for ssl_context in attempts:
        try:
            connection = pg8000.native.Connection(
                target.user,
                host=target.host,
                port=target.port,
                database=target.database,
                password=target.password,
                ssl_context=ssl_context,
                timeout=timeout,
                application_name="steward-catalog",
            )
        except Exception as exc:
            last = exc
            continue
        try:
            connection.run("SET default_transaction_read_only = on")
            return {name: connection.run(sql) for name, sql in QUERIES.items()}
        finally:
            with contextlib.suppress(Exception):
                connection.close()
    assert last is not None
    raise last


class CatalogKeeper:
    """One proxy's catalog for masking; see the module docstring."""

    def __init__(
        self, target: UpstreamTarget, *, ttl: float = 300.0, timeout: float = 10.0
    ) -> None:
        self.target = target
        self.ttl = ttl
        self.timeout = timeout
        self.catalog = Catalog()
        self._maskers: weakref.WeakSet[Masker] = weakref.WeakSet()
        self._loading: asyncio.Task[None] | None = None
        self._again = False
        self._ticker: asyncio.Task[None] | None = None

    def attach(self, masker: Masker) -> None:
        """Keep ``masker``'s catalog current; it asks for a reload after DDL."""
        masker.catalog = self.catalog
        masker.invalidated = self.request_refresh
        self._maskers.add(masker)

    async def ready(self) -> None:
        """Wait for a first catalog (a failed load is logged; masking then fails closed)."""
        if self.catalog.loaded:
            return
        self.request_refresh()
        if self._loading is not None:
            await asyncio.shield(self._loading)

    def request_refresh(self) -> int:
        """Reload soon; a request while a load runs starts another after it.

        Returns the generation of the first catalog loaded after this call.
        """
        if self._loading is not None and not self._loading.done():
            self._again = True
            return self.catalog.generation + 2
        self._loading = asyncio.get_running_loop().create_task(self._load())
        if self._ticker is None and self.ttl > 0:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self.catalog.generation + 1

    async def _load(self) -> None:
        while True:
            self._again = False
            try:
                rows = await asyncio.to_thread(fetch_rows, self.target, self.timeout)
            except Exception as exc:
                log.warning("masking catalog could not be loaded: %s", escape(str(exc)))
                return
            catalog = Catalog.from_rows(
                rows["relations"],
                rows["attributes"],
                rows["views"],
                rows["text_types"],
                generation=self.catalog.generation + 1,
            )
            self.catalog = catalog
            for masker in list(self._maskers):
                masker.catalog = catalog
            log.debug("masking catalog loaded: %d relations", len(catalog.relations))
            if not self._again:
                return

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.ttl)
            self.request_refresh()

    async def close(self) -> None:
        for task in (self._ticker, self._loading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
