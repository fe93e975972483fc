"""Logs as JSON, one object a line, for every logger of the process (uvicorn's included).

`alliance.access` writes one line per HTTP request (server.metrics.RequestMiddleware): time,
request id, user, hospital, method, route, path, status, duration. uvicorn's own access log is
off (it would say the same without the request id or the user).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

#: The fields of an access line, in order, as `extra` of the log record.
ACCESS_FIELDS = (
    "request_id",
    "user",
    "hospital",
    "method",
    "route",
    "path",
    "status",
    "duration_ms",
    "client",
)
access_log = logging.getLogger("alliance.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the access
    fields when present, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """The `logging.config.dictConfig` of `alliance serve` (given to uvicorn as log_config, so
    each worker process configures itself the same way)."""
    json_handler = {"handlers": ["json"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "server.logs.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["json"], "level": level},
        "loggers": {
            "uvicorn": json_handler,
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
