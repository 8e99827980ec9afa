"""The month's ledger as a file finance can load: CSV (always) or Parquet (with the
optional ``pyarrow`` dependency: ``pip install 'tollway[parquet]'``).

One row per ledger event with a time in the month (of the server's time zone), oldest
first per organization. Money columns are integer micro-USD (``*_micro``), and CSV also
carries the cost as exact USD text; ``time`` is ISO 8601 in UTC (Parquet: a UTC timestamp
in milliseconds). Events that are not requests (purchases, grants, reloads, expiries) have
empty workspace, user, key and model and carry their money in ``amount_micro``.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from tollway.limits.money import format_usd

COLUMNS = (
    "organization",
    "time",
    "type",
    "request_id",
    "workspace",
    "user",
    "key",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_write_tokens",
    "cache_read_tokens",
    "cost_micro",
    "included_micro",
    "extra_micro",
    "amount_micro",
)
_STRINGS = ("organization", "type", "request_id", "workspace", "user", "key", "model")


def _records(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """History.export_rows order → dicts by column name (time still in ms)."""
    names = ("organization", "time", "type", "request_id", "workspace", "user", "key", "model")
    numbers = COLUMNS[8:]
    out = []
    for r in rows:
        rec = dict(zip(names, r[:8], strict=True))
        rec.update(zip(numbers, (int(v or 0) for v in r[8:]), strict=True))
        out.append(rec)
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def to_csv(rows: list[tuple[Any, ...]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*COLUMNS, "cost_usd"])
    for rec in _records(rows):
        rec["time"] = _iso(rec["time"])
        w.writerow(
            [*("" if rec[c] is None else rec[c] for c in COLUMNS), format_usd(rec["cost_micro"])]
        )
    return buf.getvalue()


def to_parquet(rows: list[tuple[Any, ...]]) -> bytes:
    """The rows as a Parquet file (raises ImportError without pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = _records(rows)
    fields = []
    for c in COLUMNS:
        if c == "time":
            fields.append(pa.field(c, pa.timestamp("ms", tz="UTC")))
        elif c in _STRINGS:
            fields.append(pa.field(c, pa.string()))
        else:
            fields.append(pa.field(c, pa.int64()))
    schema = pa.schema(fields)
    table = pa.Table.from_pydict({c: [r[c] for r in recs] for c in COLUMNS}, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
