"""What the ledger database answers: usage, sessions, statements, the ledger replay and the
export, as SQL aggregates over ``ledger_events`` (`tollway.limits.ledgerdb`).

Every read first ships the organization's events still waiting in Redis (`Shipper.ship_org`,
idempotent), so an answer includes every request settled before it was asked, whether or
not the background shipper has caught up.

Settlement events (settle.lua, one per settled request, fields as in its header):

    debit   a billed request with a cost > 0 (moves money)
    usage   a billed request that cost nothing
    fail    a failed request: counted, never charged (no tokens, no cost)

Money events: purchase, grant, reload (a lot added), expiry (a lot's remainder expired),
reload_failed (moves nothing). `balance_effect` replays them with the rule of common.lua
``ledger_effect``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tollway.limits.ledgerdb import SETTLEMENT_TYPES, LedgerDB, split_id
from tollway.limits.shipper import Shipper
from tollway.limits.store import Store

# Report grouping → the SQL expression of its group (None: requests without one).
GROUP_SQL = {
    "org": "org",
    "workspace": "workspace",
    "user": "user_id",
    "key": "key_id",
    "model": "COALESCE(NULLIF(model, ''), '-')",
    "day": "day",
}

# The SQL condition of settlement events (one per settled request), shared by every report.
SETTLED_SQL = f"type IN ({', '.join(repr(t) for t in SETTLEMENT_TYPES)})"
_TOTALS = (
    "COUNT(*), SUM(CASE WHEN type = 'fail' THEN 1 ELSE 0 END), SUM(input_tokens), "
    "SUM(output_tokens), SUM(cache_write_tokens), SUM(cache_read_tokens), SUM(cost)"
)
_EFFECT = (
    "SUM(CASE WHEN type IN ('purchase', 'grant', 'reload') THEN amount "
    "WHEN type = 'debit' AND prepaid = 1 THEN -extra "
    "WHEN type = 'expiry' THEN -amount ELSE 0 END)"
)
MONEY_TYPES_SQL = f"type NOT IN ({', '.join(repr(t) for t in SETTLEMENT_TYPES if t != 'debit')})"


@dataclass(frozen=True, slots=True)
class UsageSums:
    """Sums of one group: requests (successful and failed), failures, tokens, cost."""

    group: str | None
    requests: int
    failures: int
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    cost: int


@dataclass(frozen=True, slots=True)
class SessionSums:
    """One model's share of one session of one organization. ``first_ms`` is the start of
    its earliest request (settled time less upstream time), ``last_ms`` its latest end."""

    org: str
    session: str
    model: str
    requests: int
    failures: int
    cost: int
    upstream_ms: int
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    first_ms: int
    last_ms: int


_SESSION_SUMS = (
    "org, session, COALESCE(NULLIF(model, ''), '-'), COUNT(*), "
    "SUM(CASE WHEN type = 'fail' THEN 1 ELSE 0 END), SUM(cost), SUM(upstream_ms), "
    "SUM(input_tokens), SUM(output_tokens), SUM(cache_write_tokens), SUM(cache_read_tokens), "
    "MIN(ts - upstream_ms), MAX(ts)"
)
_SESSION_GROUP = "GROUP BY org, session, COALESCE(NULLIF(model, ''), '-')"


def _int(v: Any) -> int:
    return int(v or 0)


def _before(entry_id: str | None) -> tuple[str, list[int]]:
    """An SQL condition (and its parameters) for events older than stream id `entry_id`."""
    if entry_id is None:
        return "", []
    ms, seq = split_id(entry_id)
    return " AND (ms < ? OR (ms = ? AND seq < ?))", [ms, ms, seq]


class History:
    """The ledger database of one store, read after shipping what waits in Redis."""

    def __init__(self, store: Store, db: LedgerDB, shipper: Shipper | None = None) -> None:
        self.store = store
        self.db = db
        self.shipper = shipper or Shipper(store, db, lambda: ())

    async def close(self) -> None:
        await self.db.close()

    async def catch_up(self, orgs: Iterable[str]) -> None:
        for org in sorted(set(orgs)):
            await self.shipper.ship_org(org)

    async def usage(self, org: str, by: str, start_day: str, end_day: str) -> list[UsageSums]:
        """Sums of `org`'s settled requests from `start_day` to `end_day` (inclusive, dates
        of the server's time zone as settle.lua wrote them), grouped by `by` (GROUP_SQL)."""
        await self.catch_up([org])
        group = GROUP_SQL[by]
        rows = await self.db.fetch(
            f"SELECT {group}, {_TOTALS} FROM ledger_events "
            f"WHERE org = ? AND day >= ? AND day <= ? AND {SETTLED_SQL} GROUP BY {group}",
            org,
            start_day,
            end_day,
        )
        return [UsageSums(r[0], *(_int(v) for v in r[1:])) for r in rows]

    async def sessions(self, orgs: Iterable[str], session_id: str) -> list[SessionSums]:
        """Session `session_id` in each of `orgs` that has one, by organization and model."""
        names = sorted(set(orgs))
        await self.catch_up(names)
        if not names:
            return []
        marks = ", ".join("?" for _ in names)
        rows = await self.db.fetch(
            f"SELECT {_SESSION_SUMS} FROM ledger_events WHERE session = ? AND org IN ({marks}) "
            f"AND {SETTLED_SQL} {_SESSION_GROUP}",
            session_id,
            *names,
        )
        return [SessionSums(r[0], r[1], r[2], *(_int(v) for v in r[3:])) for r in rows]

    async def recent_sessions(self, org: str, limit: int) -> list[SessionSums]:
        """The `limit` sessions of `org` whose last request ended last, by model."""
        await self.catch_up([org])
        ids = [
            r[0]
            for r in await self.db.fetch(
                "SELECT session FROM ledger_events WHERE org = ? AND session IS NOT NULL "
                f"AND {SETTLED_SQL} GROUP BY session ORDER BY MAX(ts) DESC, session LIMIT ?",
                org,
                limit,
            )
        ]
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        rows = await self.db.fetch(
            f"SELECT {_SESSION_SUMS} FROM ledger_events WHERE org = ? "
            f"AND session IN ({marks}) AND {SETTLED_SQL} {_SESSION_GROUP}",
            org,
            *ids,
        )
        return [SessionSums(r[0], r[1], r[2], *(_int(v) for v in r[3:])) for r in rows]

    async def settled(self, org: str, rid: str) -> bool:
        """Whether request `rid` of `org` was settled already (its event is in the ledger,
        shipped or still waiting in Redis): how a journal replay that comes after the
        settled marker expired still settles a request at most once."""
        await self.catch_up([org])
        rows = await self.db.fetch(
            f"SELECT 1 FROM ledger_events WHERE org = ? AND rid = ? AND {SETTLED_SQL} LIMIT 1",
            org,
            rid,
        )
        return bool(rows)

    async def debits_by_user(
        self, org: str, start_ms: int, end_ms: int
    ) -> dict[str | None, tuple[int, int, int]]:
        """user (None: keys without a user) → (debit events, cost, extra) of `org` whose
        time is in [start_ms, end_ms)."""
        await self.catch_up([org])
        rows = await self.db.fetch(
            "SELECT user_id, COUNT(*), SUM(cost), SUM(extra) FROM ledger_events "
            "WHERE org = ? AND ts >= ? AND ts < ? AND type = 'debit' GROUP BY user_id",
            org,
            start_ms,
            end_ms,
        )
        return {r[0]: (_int(r[1]), _int(r[2]), _int(r[3])) for r in rows}

    async def balance_effect(self, org: str, before: str | None = None) -> int:
        """What every stored event of `org` did to its balance (lots total less debt);
        with `before` (a stream id), only the events older than it."""
        if before is None:
            await self.catch_up([org])
        bound, params = _before(before)
        [(total,)] = await self.db.fetch(
            f"SELECT {_EFFECT} FROM ledger_events WHERE org = ?{bound}", org, *params
        )
        return _int(total)

    async def month_spend(self, org: str, before: str | None = None) -> dict[str, dict[str, int]]:
        """month "YYYY-MM" → {"spend:<scope>": micro-USD, "extra:<scope>": ...} for the
        scopes org, ws=W, user=U and key=K: what settle.lua added to each month hash;
        with `before` (a stream id), only from the events older than it."""
        if before is None:
            await self.catch_up([org])
        bound, params = _before(before)
        out: dict[str, dict[str, int]] = {}
        for scope, column in (
            ("org", "org"),
            ("ws", "workspace"),
            ("user", "user_id"),
            ("key", "key_id"),
        ):
            rows = await self.db.fetch(
                f"SELECT SUBSTR(day, 1, 7), {column}, SUM(cost), SUM(extra) FROM ledger_events "
                f"WHERE org = ? AND type = 'debit'{bound} GROUP BY SUBSTR(day, 1, 7), {column}",
                org,
                *params,
            )
            for month, name, cost, extra in rows:
                if name is None:
                    continue
                label = "org" if scope == "org" else f"{scope}={name}"
                h = out.setdefault(month, {})
                h[f"spend:{label}"] = _int(cost)
                if _int(extra):
                    h[f"extra:{label}"] = _int(extra)
        return out

    async def money_events(
        self, org: str, limit: int | None = None, newest_first: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        """`org`'s money events (everything but ``usage`` and ``fail``) as stream entries
        ``(id, fields)``: oldest first, or the newest `limit` newest first."""
        import orjson

        await self.catch_up([org])
        order = "DESC" if newest_first else "ASC"
        sql = (
            f"SELECT ms, seq, fields FROM ledger_events WHERE org = ? AND {MONEY_TYPES_SQL} "
            f"ORDER BY ms {order}, seq {order}"
        )
        params: list[Any] = [org]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = await self.db.fetch(sql, *params)
        return [(f"{ms}-{seq}", orjson.loads(fields)) for ms, seq, fields in rows]

    async def export_rows(
        self, start_ms: int, end_ms: int, org: str | None, orgs: Iterable[str]
    ) -> list[tuple[Any, ...]]:
        """Every event with a time in [start_ms, end_ms), of `org` or of all, oldest first:
        (org, ts, type, rid, workspace, user, key, model, input, output, cache write,
        cache read, cost, included, extra, amount)."""
        await self.catch_up([org] if org else orgs)
        where = "ts >= ? AND ts < ?"
        params: list[Any] = [start_ms, end_ms]
        if org:
            where = "org = ? AND " + where
            params.insert(0, org)
        return await self.db.fetch(
            "SELECT org, ts, type, rid, workspace, user_id, key_id, model, input_tokens, "
            "output_tokens, cache_write_tokens, cache_read_tokens, cost, included, extra, "
            f"amount FROM ledger_events WHERE {where} ORDER BY org, ts, ms, seq",
            *params,
        )


def history_of(store: Store) -> History:
    """The `History` attached to `store` by whoever opened both (app, CLI, tests)."""
    history = store.history
    if history is None:
        raise RuntimeError("no ledger database is attached to this store")
    return history
