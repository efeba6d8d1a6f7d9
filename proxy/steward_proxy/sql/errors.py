"""The errors the SQL layer raises: SQL that does not parse, SQL too costly to analyse.

Pure: no I/O.
"""

from __future__ import annotations


class SQLSyntaxError(Exception):
    """SQL that PostgreSQL's grammar rejects (or that cannot be analysed safely).

    ``cursor_position`` is the 1-based character position of the error, as
    PostgreSQL reports it in the ``P`` field of an ErrorResponse, or ``None``
    when the error has no position.
    """

    def __init__(self, message: str, cursor_position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cursor_position = cursor_position

    def __str__(self) -> str:
        if self.cursor_position is None:
            return self.message
        return f"{self.message} (at character {self.cursor_position})"


class AnalysisLimitError(Exception):
    """A statement string over a bound on what analysing it may cost (SQLSTATE 54000)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
