"""The startup state machine as a Mermaid diagram, generated from ``TRANSITIONS``.

``docs/wire.md`` embeds the output; a test keeps the two equal. Regenerate with
``python -m steward_proxy.wire.diagram``.
"""

from __future__ import annotations

from .connection import TRANSITIONS, State


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


def _name(state: State) -> str:
    return state.value.replace("-", "_")


if __name__ == "__main__":
    print(mermaid(), end="")
