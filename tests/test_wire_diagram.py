"""docs/wire.md shows the state machine generated from the table, not a stale copy."""

from __future__ import annotations

from pathlib import Path

from steward_proxy.wire import ANSWERS, TRANSITIONS
from steward_proxy.wire.diagram import answers_table, mermaid

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire.md"


def test_the_documented_diagram_is_generated_from_the_table() -> None:
    assert "```mermaid\n" + mermaid() + "```" in DOC.read_text(), (
        "docs/wire.md is stale: regenerate its diagram with python -m steward_proxy.wire.diagram"
    )


def test_the_diagram_has_one_edge_per_transition() -> None:
    edges = [line for line in mermaid().splitlines() if ": F: " in line or ": B: " in line]
    assert len(edges) == len(TRANSITIONS) + 1  # plus Terminate out of ready


def test_the_documented_answers_table_is_generated_from_the_table() -> None:
    assert answers_table() in DOC.read_text(), (
        "docs/wire.md is stale: regenerate its answers table with "
        "python -m steward_proxy.wire.diagram answers"
    )


def test_the_answers_table_has_one_row_per_answer() -> None:
    assert len(answers_table().splitlines()) == len(ANSWERS) + 2
