"""A pure byte-forwarding TCP relay: the baseline the proxy is compared with.

Same shell as ``steward proxy`` (asyncio protocols, uvloop when installed, one
upstream connection per client, back-pressure) but no framing, no policy, no
audit: what any Python proxy pays just to move the bytes. Loopback only.
Usage: ``python bench/forwarder.py LISTEN_PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import asyncio
import signal
import sys


class _Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.resume_reading()


async def main(listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()

    def accept() -> _Pipe:
        client = _Pipe()

        async def connect() -> None:
            _, upstream = await loop.create_connection(_Pipe, "127.0.0.1", upstream_port)
            upstream.peer, client.peer = client, upstream
            for chunk in client.pending:
                upstream.transport.write(chunk)  # type: ignore[union-attr]
            client.pending.clear()

        task = loop.create_task(connect())
        client.connect_task = task  # type: ignore[attr-defined]
        return client

    server = await loop.create_server(accept, "127.0.0.1", listen_port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(int(sys.argv[1]), int(sys.argv[2])))
