"""Reconciliation: recompute every balance and month-to-date spend from the ledger and
report where Redis (what admission reads) differs. Zero differences are expected.

For one organization, at one instant:

1. ship its waiting events (so the database holds nearly all of them);
2. read, in one Redis transaction, the account (balance, debt, ledger_base), every month
   hash, the events still in the stream and the stream's last id;
3. sum, in the database, the events older than the first event still in the stream (or
   than the last id, when none waits): with the events read in 2, that is exactly every
   event written before the instant of 2, whatever traffic and shipping do meanwhile.

Compared: ``balance - debt`` against ``ledger_base`` plus the effect of every event
(common.lua ``ledger_effect``), and each month hash's ``spend:<scope>``/``extra:<scope>``
(scopes org, ws=W, user=U, key=K) against the sums of that month's debit events. Months
whose hash has expired from Redis (kept ~13 months) are not compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tollway.limits.history import history_of
from tollway.limits.shipper import next_id
from tollway.limits.store import Store

_SCOPES = ("org", "ws=", "user=", "key=")


@dataclass(frozen=True, slots=True)
class Drift:
    org: str
    what: str  # "balance" or "<YYYY-MM> spend:<scope>" / "<YYYY-MM> extra:<scope>"
    redis: int  # micro-USD
    ledger: int  # micro-USD


def event_effect(f: Mapping[str, str]) -> int:
    """common.lua ``ledger_effect``: how an event moves lots total less debt."""
    t = f.get("type")
    if t in ("purchase", "grant", "reload"):
        return int(f.get("amount") or 0)
    if t == "debit" and f.get("prepaid") == "1":
        return -int(f.get("extra") or 0)
    if t == "expiry":
        return -int(f.get("amount") or 0)
    return 0


def add_debit(months: dict[str, dict[str, int]], f: Mapping[str, str]) -> None:
    """Add one debit event to the month sums, as settle.lua adds it to the month hash."""
    if f.get("type") != "debit" or not f.get("day"):
        return
    h = months.setdefault(f["day"][:7], {})
    scopes = ["org"]
    scopes += [
        f"{p}={f[n]}" for p, n in (("ws", "ws"), ("user", "user"), ("key", "key")) if f.get(n)
    ]
    cost, extra = int(f.get("cost") or 0), int(f.get("extra") or 0)
    for s in scopes:
        h[f"spend:{s}"] = h.get(f"spend:{s}", 0) + cost
        if extra:
            h[f"extra:{s}"] = h.get(f"extra:{s}", 0) + extra


def _compared(field: str) -> bool:
    kind, _, scope = field.partition(":")
    return kind in ("spend", "extra") and scope.startswith(_SCOPES)


async def reconcile_org(store: Store, org: str) -> list[Drift]:
    """The differences between Redis and the ledger for `org` (empty: none)."""
    history = history_of(store)
    await history.catch_up([org])
    k, client = store.keys, store.client
    months = sorted(
        [name.rsplit(":", 1)[1] async for name in client.scan_iter(match=k.month(org, "*"))]
    )
    pipe = client.pipeline(transaction=True)
    pipe.hmget(k.account(org), "balance", "debt", "ledger_base")
    for month in months:
        pipe.hgetall(k.month(org, month))
    pipe.xrange(k.ledger(org), "-", "+")
    pipe.xinfo_stream(k.ledger(org))
    replies = await store.call("reconcile", pipe.execute, raise_on_error=False)
    balance, debt, base = (int(v or 0) for v in replies[0])
    redis_months = dict(zip(months, replies[1 : 1 + len(months)], strict=True))
    waiting, info = replies[1 + len(months)], replies[2 + len(months)]
    if waiting:
        before: str | None = waiting[0][0]
    elif isinstance(info, dict):
        before = next_id(str(info["last-generated-id"]))
    else:  # no stream: no event was ever written, or none of this version
        before = None

    expected_balance = base + await history.balance_effect(org, before or "0-0")
    expected_balance += sum(event_effect(f) for _, f in waiting)
    ledger_months = await history.month_spend(org, before or "0-0")
    for _, f in waiting:
        add_debit(ledger_months, f)

    drifts = []
    if balance - debt != expected_balance:
        drifts.append(Drift(org, "balance", balance - debt, expected_balance))
    for month, h in sorted(redis_months.items()):
        mine = ledger_months.get(month, {})
        fields = sorted({f for f in h if _compared(f)} | set(mine))
        for f in fields:
            r, led = int(h.get(f, 0)), mine.get(f, 0)
            if r != led:
                drifts.append(Drift(org, f"{month} {f}", r, led))
    return drifts


async def reconcile(store: Store, orgs: Iterable[str]) -> list[Drift]:
    out: list[Drift] = []
    for org in sorted(set(orgs)):
        out += await reconcile_org(store, org)
    return out
