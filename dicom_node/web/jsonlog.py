"""Logs as JSON lines (``web.log_format: json``), for a log shipper to parse.

The messages are the same PHI-free messages as the text format: studies by
tag, never names or IDs.
"""

from __future__ import annotations

import datetime
import json
import logging

__all__ = ["JsonFormatter", "use_json_logs"]


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, process, thread."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            # Rendered without exception text by dicom_node.log_privacy.
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def use_json_logs() -> None:
    """Switch every handler of the root logger to :class:`JsonFormatter`."""
    formatter = JsonFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
