"""Structured logs: one line per event, ``event key=value ...`` as text or one JSON object.

``log_event(logger, "model_reloaded", model="x", version="3")`` writes the text line
``model_reloaded model=x version=3`` and keeps the fields on the record, so ``JsonFormatter``
(``adapt serve --log-format json``) can emit them as JSON keys for log collectors.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with its fields."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join([event, *(f"{k}={_text(v)}" for k, v in fields.items())])
    logger.log(level, "%s", text, extra={"event": event, "fields": fields})


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event:
            entry["event"] = event
            entry.update({k: v for k, v in getattr(record, "fields", {}).items() if k not in entry})
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json_logs() -> None:
    """Switch every handler of the root logger to ``JsonFormatter``."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
