"""The JSON log line (`proxy/runtime/logs.py`): its timestamp, cached per second, reads as
the record's own time to the millisecond; the fields passed in ``extra`` follow."""

from __future__ import annotations

import logging
import time

import orjson
from tollway.proxy.runtime.logs import JsonFormatter


def record(created: float, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("tollway.request", logging.INFO, "x.py", 1, "settled", (), None)
    r.created, r.msecs = created, int((created - int(created)) * 1000) + 0.0
    r.__dict__.update(extra)
    return r


def expected_ts(created: float) -> str:
    second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{second}.{int((created - int(created)) * 1000):03d}Z"


def test_timestamps_across_second_boundaries_and_back() -> None:
    fmt = JsonFormatter()
    instants = [1_800_000_000.0, 1_800_000_000.999, 1_800_000_001.0004, 1_800_000_001.5]
    instants += [1_799_999_999.25, 1_800_086_400.0, 1_800_000_001.5]  # back, a day on
    for created in instants:
        line = orjson.loads(fmt.format(record(created)))
        assert line["ts"] == expected_ts(created)


def test_the_extra_fields_follow_in_order() -> None:
    line = orjson.loads(JsonFormatter().format(record(1_800_000_000.5, rid="req_1", ok=True)))
    assert list(line) == ["ts", "level", "logger", "msg", "rid", "ok"]
    assert (line["level"], line["logger"], line["msg"]) == ("info", "tollway.request", "settled")
