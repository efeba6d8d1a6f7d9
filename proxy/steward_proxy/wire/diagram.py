"""The protocol tables as documentation: the startup state machine as a Mermaid
diagram (from ``TRANSITIONS``) and the tracker's answers as a Markdown table
(from ``ANSWERS``).

``docs/wire.md`` embeds both; a test keeps them equal. Regenerate with
``python -m steward_proxy.wire.diagram`` (the diagram) and
``python -m steward_proxy.wire.diagram answers`` (the table).
"""

from __future__ import annotations

import sys

from . import messages as m
from .connection import TRANSITIONS, State
from .tracker import ANSWERS, Request


def mermaid() -> str:
    """A ``stateDiagram-v2`` of every transition, frontend messages marked ``F:``."""
    lines = ["stateDiagram-v2", "    [*] --> startup"]
    for (state, message), target in TRANSITIONS.items():
        sender = "F" if message.FRONTEND else "B"
        lines.append(f"    {_name(state)} --> {_name(target)}: {sender}: {message.__name__}")
    lines.append("    ready --> ready: any query-protocol message")
    lines.append("    ready --> closed: F: Terminate")
    lines.append("    closed --> [*]")
    return "\n".join(lines) + "\n"


_BACKEND_NAMES = {
    cls.TYPE: cls.__name__
    for cls in vars(m).values()
    if isinstance(cls, type) and issubclass(cls, m.Message) and cls.TYPE and not cls.FRONTEND
}


def answers_table() -> str:
    """A Markdown table: for each pending request, the answers it takes and what they do."""
    lines = ["| pending request | server message | effect |", "|---|---|---|"]
    for request in Request:
        for (kind, type_byte), answer in ANSWERS.items():
            if kind is request:
                name = _BACKEND_NAMES.get(type_byte, type_byte.decode())
                lines.append(f"| {request.name} | {name} | {answer.value} |")
    return "\n".join(lines) + "\n"


def _name(state: State) -> str:
    return state.value.replace("-", "_")


if __name__ == "__main__":
    print(answers_table() if sys.argv[1:] == ["answers"] else mermaid(), end="")
