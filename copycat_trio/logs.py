"""Log output for `copycat-trio serve`: text or one JSON object per line, each record carrying
the member's id, term and role at the moment it was logged, so that lines from several members
can be merged and filtered by a log shipper."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["LEVELS", "MemberContext", "configure_logging"]

LEVELS = ("debug", "info", "warning", "error")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class MemberContext(logging.Filter):
    """Adds `member`, `term` and `role` to every record, read from `source` (None until the
    server runs)."""

    def __init__(self, source: Callable[[], tuple[int, int, str] | None]) -> None:
        super().__init__()
        self.source = source

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            context = self.source()
        except Exception:  # a server not started yet, or stopped
            context = None
        record.member, record.term, record.role = context or (None, None, None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the member's
    id/term/role, and the exception's text if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "member": getattr(record, "member", None),
            "term": getattr(record, "term", None),
            "role": getattr(record, "role", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(
    level: str, log_format: str, context: MemberContext | None = None
) -> logging.Handler:
    """Send every log record to stderr at `level` ("debug" ... "error") as `log_format`
    ("text" or "json"); returns the handler (replacing any the root logger had)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    if context is not None:
        handler.addFilter(context)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
