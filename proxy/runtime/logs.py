"""Structured logs: one JSON object per line on stderr.

Only the fields passed in ``extra`` are added; nothing in this module reads headers, so an
API key can reach a log line only if a caller puts it there (none does, and a test checks).

Every proxied request writes a line (``settled`` or ``refused``), so a line must be cheap:
`setup` switches off what the standard library gathers for each record and no line
shows (the caller's file and line, thread and process names: the documented switches of
the logging HOWTO's "Optimization" section), and the formatter renders the second of a
timestamp once per second.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _ts(self, created: float) -> str:
        """The timestamp of `created` to the second (UTC)."""
        second = int(created)
        if second != self._second:  # one strftime per second, not per line
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return self._stamp

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": f"{self._ts(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request lines are debug-level noise at INFO in aiohttp's access log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # What no line shows is not gathered (a third of a record's cost).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
