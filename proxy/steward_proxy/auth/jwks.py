"""Fetching the OIDC provider's key set: the thin shell around :class:`KeyCache`.

:class:`JwksSource` reads the JWKS from a file or an ``https://`` URL (plain
``http://`` only on a loopback host), or, with no location given, from the
``jwks_uri`` of the issuer's ``/.well-known/openid-configuration``. Fetches
run in a worker thread with a timeout and a size bound; sign-ins that need
keys at the same moment share one fetch, and :meth:`KeyCache.may_fetch`
decides whether a new one may start. A fetch that fails keeps the keys there
were and is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from steward_proxy.auth.methods import is_loopback
from steward_proxy.auth.oidc import KeyCache, KeySet, KeySetError
from steward_proxy.escape import escape

log = logging.getLogger("steward.proxy")

MAX_DOCUMENT_BYTES = 1 << 20
FETCH_TIMEOUT = 5.0


class FetchError(Exception):
    """The key set or the discovery document could not be read."""


def check_url(url: str) -> None:
    """Refuse a key set location an attacker on the network could answer for."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    raise ValueError(f"{url}: the key set must come over https:// (http:// only on loopback)")


def _read_url(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            data = response.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise FetchError(f"{url}: {exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
    return data


class JwksSource:
    """Where the keys come from; fills a :class:`KeyCache`."""

    def __init__(self, cache: KeyCache, location: str | None, issuer: str) -> None:
        self.cache = cache
        self.location = location
        self.issuer = issuer
        if location is None:
            check_url(issuer)
        elif "://" in location:
            check_url(location)
        self._inflight: asyncio.Future[None] | None = None

    def _fetch(self) -> KeySet:
        """Blocking: read and parse the key set (run in a thread)."""
        location = self.location
        if location is None:
            discovery = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                location = json.loads(_read_url(discovery))["jwks_uri"]
            except (ValueError, KeyError, TypeError):
                raise FetchError(f"{discovery}: no jwks_uri in the discovery document") from None
            check_url(location)
        if "://" in location:
            document = _read_url(location)
        else:
            try:
                document = Path(location).read_bytes()
            except OSError as exc:
                raise FetchError(f"{location}: {exc.strerror or exc}") from None
        try:
            return KeySet.from_json(document)
        except KeySetError as exc:
            raise FetchError(f"{location}: {exc}") from None

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the key set unless one was tried too recently; join a fetch under way."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        now = time.monotonic()
        if not force and not self.cache.may_fetch(now):
            return
        self.cache.attempting(now)
        self._inflight = asyncio.ensure_future(self._refresh())
        try:
            await asyncio.shield(self._inflight)
        finally:
            self._inflight = None

    async def _refresh(self) -> None:
        try:
            keys = await asyncio.to_thread(self._fetch)
        except (FetchError, ValueError) as exc:
            log.warning("OIDC key set not fetched: %s", escape(str(exc), limit=1024))
            return
        self.cache.store(keys, time.monotonic())
        ids = ", ".join(sorted(str(k.key_id) for k in keys.keys))
        log.info("OIDC key set fetched: %d key(s) (%s)", len(keys.keys), escape(ids))
