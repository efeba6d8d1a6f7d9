"""The pipe between the proxy and its worker processes (analysis, masking).

A worker is ``python -m MODULE ARGS...`` speaking a small framed protocol on
its standard input and output: a 4-byte big-endian length, then a pickle,
one request and one answer at a time. Both ends are Steward, so the pickles
never cross a trust boundary.
"""

from __future__ import annotations

import asyncio
import pickle
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

__all__ = ["Worker", "frame", "requests", "spawn"]

_LENGTH = 4


def frame(value: Any) -> bytes:
    """``value`` as one message of the protocol."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "big") + data


class Worker:
    """One worker process, seen from the proxy."""

    __slots__ = ("pid", "process")

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid

    async def ask(self, request: Any) -> Any:
        """Send ``request``, return the answer (raises if the pipe breaks)."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(frame(request))
        await stdin.drain()
        size = int.from_bytes(await stdout.readexactly(_LENGTH), "big")
        return pickle.loads(await stdout.readexactly(size))


async def spawn(module: str, *args: str) -> Worker:
    """Start ``python -m module args...`` with pipes on its standard input and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    return Worker(process)


def requests(reader: BinaryIO) -> Iterator[Any]:
    """In the worker: each request on ``reader``, until it closes."""
    while True:
        header = reader.read(_LENGTH)
        if len(header) < _LENGTH:
            return
        yield pickle.loads(reader.read(int.from_bytes(header, "big")))
