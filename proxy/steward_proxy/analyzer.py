"""Statement analysis off the event loop, in worker processes with a time and memory budget.

Parsing costs far more than the text it reads: a megabyte of ``SELECT 1,1,...``
becomes a parse tree of gigabytes and seconds of work. Inline, that would stall
every session of the proxy and could get the whole process killed for its
memory. So a session hands statement text above a small size to
:class:`AnalysisPool` (see ``Session.pending_analysis``), which runs
:func:`steward_proxy.sql.analyze` in a separate process: one whose address
space is capped (``RLIMIT_AS``), and which is killed when it runs past its
time. Either way the statement is refused (SQLSTATE 54000), the session goes
on, and the pool starts a fresh worker.

The worker speaks :mod:`.workerpipe`'s framed protocol. Requests are
``(sql, max_statements)``; answers are tagged tuples (``("ok", statements)``,
``("syntax", message, position)``, ``("limit", message)``).

Run as ``python -m steward_proxy.analyzer MEMORY_BYTES`` (the pool does this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import sys
from typing import Any

from steward_proxy.engine import Analysis
from steward_proxy.sql import AnalysisLimitError, SQLSyntaxError, analyze_uncached
from steward_proxy.workerpipe import Worker, frame, requests, spawn

log = logging.getLogger("steward.proxy")


class AnalysisPool:
    """Worker processes that analyse statement text for the event loop.

    ``workers`` processes run at most that many analyses at once; a request
    waits for a free worker, and its ``timeout`` counts from the request, the
    wait included, so a session is never held longer than that.
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        timeout: float = 5.0,
        memory_bytes: int = 1 << 30,
        max_statements: int = 0,
    ) -> None:
        if workers < 1:
            raise ValueError("an analysis pool needs at least one worker")
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self.max_statements = max_statements
        self._free: asyncio.Queue[Worker | None] = asyncio.Queue()
        for _ in range(workers):
            self._free.put_nowait(None)  # a slot; the process starts on first use
        self._workers: set[Worker] = set()
        self.killed = 0
        """Workers ended for running past their time or memory (for metrics)."""

    async def start(self) -> None:
        """Start the worker processes now rather than on the first request."""
        slots = [self._free.get_nowait() for _ in range(self._free.qsize())]
        for slot in slots:
            self._free.put_nowait(slot or await self._spawn())

    async def analyze(self, sql: str) -> Analysis:
        """The analysis of ``sql``, or the reason it is refused."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                slot = await self._free.get()
        except TimeoutError:
            return AnalysisLimitError(
                f"statement refused: no analysis worker was free within {self.timeout:g}s"
            )
        worker = slot
        try:
            if worker is None:
                worker = await self._spawn()
            async with asyncio.timeout_at(deadline):
                answer = await worker.ask((sql, self.max_statements))
        except TimeoutError:
            self._kill(worker)
            worker = None
            return AnalysisLimitError(
                f"statement refused: analysing it took longer than {self.timeout:g}s"
            )
        except (OSError, EOFError, asyncio.IncompleteReadError, pickle.PickleError) as exc:
            log.warning("analysis worker failed: %s", exc or type(exc).__name__)
            self._kill(worker)
            worker = None
            return AnalysisLimitError(
                "statement refused: analysing it needs more than the "
                f"{self.memory_bytes >> 20} MiB an analysis may use"
            )
        finally:
            self._free.put_nowait(worker)
        return _result(answer)

    async def close(self) -> None:
        """End every worker process."""
        for worker in list(self._workers):
            self._kill(worker)
            with contextlib.suppress(ProcessLookupError):
                await worker.process.wait()

    async def _spawn(self) -> Worker:
        worker = await spawn("steward_proxy.analyzer", str(self.memory_bytes))
        self._workers.add(worker)
        return worker

    def _kill(self, worker: Worker | None) -> None:
        if worker is None:
            return
        self.killed += 1
        self._workers.discard(worker)
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()


def _result(answer: Any) -> Analysis:
    tag = answer[0]
    if tag == "ok":
        return tuple(answer[1])
    if tag == "syntax":
        return SQLSyntaxError(answer[1], answer[2])
    return AnalysisLimitError(answer[1])


def _answer(sql: str, max_statements: int, memory_bytes: int) -> tuple[Any, ...]:
    try:
        return ("ok", analyze_uncached(sql, max_statements=max_statements))
    except SQLSyntaxError as exc:
        if "out of memory" in exc.message:
            return ("limit", _over_memory(memory_bytes))
        return ("syntax", exc.message, exc.cursor_position)
    except AnalysisLimitError as exc:
        return ("limit", exc.message)
    except MemoryError:
        return ("limit", _over_memory(memory_bytes))


def _over_memory(memory_bytes: int) -> str:
    return (
        "statement refused: analysing it needs more than the "
        f"{memory_bytes >> 20} MiB an analysis may use"
    )


def main(argv: list[str]) -> int:
    """The worker: answer requests on stdin until it closes."""
    import resource

    memory_bytes = int(argv[0])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    writer = sys.stdout.buffer
    for sql, max_statements in requests(sys.stdin.buffer):
        answer = _answer(sql, max_statements, memory_bytes)
        try:
            data = frame(answer)
        except MemoryError:
            data = frame(("limit", _over_memory(memory_bytes)))
        writer.write(data)
        writer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
