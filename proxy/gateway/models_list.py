"""What ``/v1/models`` shows a key: only the models it may use, in each provider's format.

The upstream's list describes the operator's whole account (fine-tunes named after other
customers, models Tollway would refuse). A key sees a model only when it is *usable*: the
price book prices it (now) and the key's allow-list, if any, admits it. The list keeps the
upstream's entries (their fields as sent) in the upstream's order:

- OpenAI: ``{"object": "list", "data": [...]}``.
- Anthropic: ``{"data": [...], "has_more": ..., "first_id": ..., "last_id": ...}``, ids
  recomputed from the filtered page (null when it is empty). ``has_more`` is the
  upstream's: a client paging on (``after_id``) gets the next filtered page. When a page
  with more after it filters down to nothing, ``last_id`` stays the upstream's cursor, so
  paging still moves on (it names the page boundary, never a model in ``data``).

``/v1/models/{id}`` of a model the key may not use is a 404 in the provider's format,
answered without asking the upstream. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from tollway.config.schema import Config
from tollway.limits.keyrecord import KeyRecord
from tollway.proxy.gateway.providers import ANTHROPIC

Usable = Callable[[str], bool]


def usable(cfg: Config, record: KeyRecord | None, now_ms: int) -> Usable:
    """Whether a model id is usable by the key of `record` (None: a key without a
    record at hand, only the price book applies) under `cfg` at `now_ms`."""

    def check(model: str) -> bool:
        if cfg.price_book.find(model, now_ms) is None:
            return False
        return record is None or record.allows(model)

    return check


def filter_list(provider: str, body: bytes, ok: Usable) -> bytes | None:
    """The upstream's model list `body` with only the usable models, in `provider`'s
    format; None when the body is not a model list (the caller answers a 502)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        return None
    data = [m for m in doc["data"] if isinstance(m, dict) and _usable(m, ok)]
    if provider != ANTHROPIC:
        return orjson.dumps({"object": "list", "data": data})
    has_more = doc.get("has_more") is True
    first = data[0]["id"] if data else None
    last = data[-1]["id"] if data else (doc.get("last_id") if has_more else None)
    return orjson.dumps({"data": data, "has_more": has_more, "first_id": first, "last_id": last})


def _usable(model: dict[str, Any], ok: Usable) -> bool:
    mid = model.get("id")
    return isinstance(mid, str) and ok(mid)
