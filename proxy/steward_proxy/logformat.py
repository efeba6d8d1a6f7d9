"""``--log-format json``: one JSON object per log line, for log pipelines.

Keys: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, and
``exception`` when a traceback is attached. Messages are the same text the
plain format writes; whatever a client controlled is escaped in them already.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """Formats a record as one compact JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
