"""Log lines as JSON (LOG_FORMAT=json, issue 18), each line of a session carrying its id."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

from bot.untrusted import strip_controls

# The session a task works on: set where a job starts (runner/worker.py), inherited by the tasks it spawns.
SESSION_ID: ContextVar[str | None] = ContextVar("sesame_session_id", default=None)


class SessionFilter(logging.Filter):
    """Adds `session_id` (None outside a session) to every record passing the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.session_id = SESSION_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, session_id, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": strip_controls(record.getMessage()),
            "session_id": getattr(record, "session_id", None)}
        if record.exc_info:
            line["exc"] = strip_controls(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def use_json_lines() -> None:
    """Switch every handler of the root logger to JSON lines."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, SessionFilter) for f in handler.filters):
            handler.addFilter(SessionFilter())
