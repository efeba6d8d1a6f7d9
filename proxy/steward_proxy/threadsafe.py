"""Running a call on the proxy's event loop from another thread (the admin endpoint's)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

__all__ = ["call_on_loop"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


def call_on_loop(
    loop: asyncio.AbstractEventLoop | None, call: Callable[[], T], timeout: float = DEFAULT_TIMEOUT
) -> T:
    """``call()`` run on ``loop``, its result or exception passed back to this thread."""
    if loop is None:
        raise RuntimeError("the proxy is not running")
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return done.result(timeout=timeout)
