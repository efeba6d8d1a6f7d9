"""Masking long results in worker processes, so rows are masked on every core.

Masking a row costs microseconds of Python (a keyed hash alone is one), and
one event loop runs on one core. With ``--mask-workers N``, a session's row
filter hands each run of rows longer than ``AnalysisLimits.mask_offload_bytes``
out as a :class:`~steward_proxy.masking.rows.MaskJob` (see
``masking.rows.offloading_filter``); the shell sends it to a :class:`MaskPool`
worker, which runs the same filter (:func:`~steward_proxy.masking.rows.run_job`),
and the client gets the rows in order (``client.ClientProtocol``).

A worker speaks :mod:`.workerpipe`'s framed protocol. Requests are
``(recipe, rows)``; answers ``("ok", rows)`` or ``("protocol", message)``
for rows that break the protocol. A worker that dies or is interrupted mid-answer is killed and
replaced, and its job fails: the session it was for ends, no row unmasked.

Run as ``python -m steward_proxy.maskworkers`` (the pool does this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

from steward_proxy.masking.rows import MaskJob, run_job
from steward_proxy.wire import ProtocolError, RemoteProtocolError
from steward_proxy.workerpipe import Worker, frame, requests, spawn

log = logging.getLogger("steward.proxy")


class MaskWorkerError(Exception):
    """A masking worker died or answered nothing usable; the job's rows are lost."""


class MaskPool:
    """``workers`` processes that mask jobs, one job each at a time, in order of arrival."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a masking pool needs at least one worker")
        self.workers = workers
        self._free: asyncio.Queue[Worker | None] = asyncio.Queue()
        for _ in range(workers):
            self._free.put_nowait(None)  # a slot; the process starts on first use
        self._running: set[Worker] = set()
        self.failed = 0
        """Workers that died or were interrupted, and were replaced (each is logged)."""

    async def start(self) -> None:
        """Start the worker processes now rather than on the first job."""
        slots = [self._free.get_nowait() for _ in range(self._free.qsize())]
        for slot in slots:
            self._free.put_nowait(slot or await self._spawn())

    async def mask(self, job: MaskJob) -> bytes:
        """The rows that replace ``job.rows``.

        Raises :class:`RemoteProtocolError` for rows that break the protocol
        (as the filter would inline) and :class:`MaskWorkerError` when the
        worker fails. Cancelled (its session ended), a job still waiting for
        a worker never reaches one; one at a worker is finished there, its
        answer dropped, and the worker serves the next.
        """
        worker = await self._free.get()
        asked = asyncio.ensure_future(self._ask(worker, job))
        try:
            answer = await asyncio.shield(asked)
        except asyncio.CancelledError:
            asked.add_done_callback(_dropped)
            raise
        if answer[0] == "ok":
            return answer[1]  # type: ignore[no-any-return]
        raise RemoteProtocolError(answer[1])

    async def _ask(self, worker: Worker | None, job: MaskJob) -> Any:
        try:
            if worker is not None and worker.process.returncode is not None:
                self._kill(worker)  # it died between jobs: none of its rows are lost
                worker = None
            if worker is None:
                worker = await self._spawn()
            return await worker.ask((job.recipe, job.rows))
        except asyncio.CancelledError:
            self._kill(worker)  # its answer may still come: it must not reach another job
            worker = None
            raise
        except Exception as exc:
            # Any failure mid-exchange leaves the pipe out of step: the worker goes.
            # RuntimeError: the event loop's word for a pipe already closed.
            self._kill(worker)
            worker = None
            raise MaskWorkerError(f"masking worker failed: {exc or type(exc).__name__}") from None
        finally:
            self._free.put_nowait(worker)

    async def close(self) -> None:
        """End every worker process."""
        for worker in list(self._running):
            self._kill(worker, failed=False)
            with contextlib.suppress(ProcessLookupError):
                await worker.process.wait()

    async def _spawn(self) -> Worker:
        worker = await spawn("steward_proxy.maskworkers")
        self._running.add(worker)
        return worker

    def _kill(self, worker: Worker | None, *, failed: bool = True) -> None:
        if worker is None:
            return
        if failed:
            self.failed += 1
            log.warning("masking worker %d ended; a fresh one starts on next use", worker.pid)
        self._running.discard(worker)
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()


def _dropped(asked: asyncio.Future[Any]) -> None:
    if not asked.cancelled():
        asked.exception()  # the session that wanted it has ended


def main() -> int:
    """The worker: answer jobs on stdin until it closes."""
    writer = sys.stdout.buffer
    for recipe, rows in requests(sys.stdin.buffer):
        try:
            answer: tuple[str, Any] = ("ok", run_job(recipe, rows))
        except ProtocolError as exc:
            answer = ("protocol", exc.message)
        writer.write(frame(answer))
        writer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
