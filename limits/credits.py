"""Prepaid credits: lots, balance, ledger, expiry on read, auto-reload settings.

An organization's credit is a set of *lots* (``purchased`` or ``promotional``), each with
an amount, a remainder and an expiry. The admit and settle scripts debit them; this module
adds them (`buy`, `grant`), reads them (`balance`, `lots`, `history`) and checks them
(`recompute_from_ledger`). Contracts:

- Amounts are integer micro-USD, ``0 < amount <= MAX_AMOUNT``; anything else is a
  `CreditError` and changes nothing.
- A purchase is usable at once and expires exactly one year later (`one_year_later`); the
  expiry cannot be extended and there is no refund operation, only expiry.
- A promotional grant expires after its own period. A grant carrying an identity is given
  only to the first organization presenting it: the SHA-256 digest of its canonical form
  (`tollway.limits.identity`: trimmed, case-folded, phones in E.164, e-mail aliases
  folded) is claimed with ``SET NX`` on a global key before the lot is added; a second
  claim, by any organization and in any spelling, is a `CreditError`.
- Every read applies expiry first (``expire.lua``): a lot past its expiry never counts,
  even when no request came by since.
- Lot ids (``lot_<ms, 13 digits>_<random>``) sort by creation, which breaks ties between
  lots with the same kind and expiry in the consumption order.
- The ledger (Redis stream, shipped to the ledger database) holds every money event;
  `recompute_from_ledger` replays it.

Run-time auto-reload settings live in the organization's ``cfg`` hash (``reload:off``,
``reload:threshold``, ``reload:target``); settle.lua honours them, `auto_reload_settings` reads
them the same way.
"""

from __future__ import annotations

import calendar
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.typing import EncodableT, FieldT
from tollway.config.schema import AutoReload, Config
from tollway.limits.clock import Clock
from tollway.limits.errors import CreditError
from tollway.limits.history import history_of
from tollway.limits.identity import claim as claim_identity
from tollway.limits.lots import AutoReloadSettings as AutoReloadSettings
from tollway.limits.lots import Balance as Balance
from tollway.limits.lots import Event as Event
from tollway.limits.lots import Lot as Lot
from tollway.limits.money import format_usd
from tollway.limits.rkeys import Fields
from tollway.limits.store import Store

PURCHASED, PROMOTIONAL = "purchased", "promotional"
MAX_AMOUNT = 10**15  # 1e9 USD: every sum stays exact in a Lua double (< 2**53)
EVENT_ADDS = frozenset({"purchase", "grant", "reload"})


def one_year_later(ms: int) -> int:
    """The same instant on the same calendar date one year later, in UTC; 29 February
    becomes 28 February. 2026-03-05T10:00Z → 2027-03-05T10:00Z."""
    seconds, rest = divmod(ms, 1000)
    t = datetime.fromtimestamp(seconds, UTC)
    try:
        later = t.replace(year=t.year + 1)
    except ValueError:  # 29 February, and next year has none
        later = t.replace(year=t.year + 1, day=28)
    return calendar.timegm(later.utctimetuple()) * 1000 + rest


def new_lot_id(now_ms: int) -> str:
    return f"lot_{now_ms:013d}_{secrets.token_hex(4)}"


def check_amount(amount: Any) -> int:
    """The amount itself when it is a valid credit amount, else `CreditError`."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise CreditError(f"an amount must be an integer number of micro-USD, got {amount!r}")
    if amount <= 0:
        raise CreditError(f"the amount must be greater than zero, got {format_usd(amount)} USD")
    if amount > MAX_AMOUNT:
        raise CreditError(f"the amount must be at most {format_usd(MAX_AMOUNT)} USD")
    return amount


class Credits:
    """Credit operations of every organization, on one store.

    `config`, when given, returns the live `Config`: operations on organizations it does
    not know, or that are not prepaid, are refused (credit there could never be spent,
    and purchases are not refundable)."""

    def __init__(
        self, store: Store, clock: Clock, config: Callable[[], Config] | None = None
    ) -> None:
        self.store = store
        self.keys = store.keys
        self.clock = clock
        self.config = config

    # --- adding credit ----------------------------------------------------------------
    async def buy(
        self,
        org: str,
        amount_micro: int,
        *,
        source: str = "purchase",
        ref: str = "",
        lot_id: str | None = None,
    ) -> Lot:
        """Add a purchased lot, usable now, expiring one year from now. `source` is
        ``purchase`` (an operator's purchase) or ``reload`` (auto-reload, `ref` = the
        payment id). A given `lot_id` that exists already is refused (`CreditError`), so
        a caller retrying after a store error cannot add the same lot twice."""
        if source not in ("purchase", "reload"):
            raise CreditError(f"unknown purchase source {source!r}")
        self._check_org(org)
        amount = check_amount(amount_micro)
        now = self.clock.now_ms()
        if lot_id is not None and await self.has_lot(org, lot_id):
            raise CreditError(f"lot {lot_id!r} exists already")
        expires = one_year_later(now)
        return await self._add(org, PURCHASED, amount, now, expires, source, ref, lot_id)

    async def grant(
        self,
        org: str,
        amount_micro: int,
        expires_in: timedelta,
        identity: str | None = None,
    ) -> Lot:
        """Add a promotional lot expiring `expires_in` from now. With an `identity`, only
        the first organization ever to present it gets the grant."""
        self._check_org(org)
        amount = check_amount(amount_micro)
        if expires_in <= timedelta(0):
            raise CreditError("a grant must expire in the future (expires-in > 0)")
        if identity is not None and not identity.strip():
            raise CreditError("the identity must not be empty")
        now = self.clock.now_ms()
        expires = now + expires_in // timedelta(milliseconds=1)
        lot_id = new_lot_id(now)
        claim = None
        if identity is not None:
            claim = await claim_identity(self.store, identity, f"{org} {lot_id}")
            if claim is None:
                raise CreditError(
                    "this identity has already received a promotional grant: "
                    "a grant with an identity is given to one organization only"
                )
        try:
            return await self._add(org, PROMOTIONAL, amount, now, expires, "grant", "", lot_id)
        except BaseException:
            if claim is not None:
                await self._unclaim(org, claim, lot_id)
            raise

    async def _unclaim(self, org: str, claim: str, lot_id: str) -> None:
        """Free an identity whose grant failed, unless the lot was added after all (a
        timeout can hide a script that ran). Best effort: the store failed already."""
        client = self.store.client
        try:
            if await client.exists(self.keys.lot(org, lot_id)):
                return
            if await client.get(claim) == f"{org} {lot_id}":
                await client.delete(claim)
        except Exception:
            pass

    async def _add(
        self,
        org: str,
        kind: str,
        amount: int,
        now: int,
        expires: int,
        source: str,
        ref: str,
        lot_id: str | None = None,
    ) -> Lot:
        k = self.keys
        lot_id = lot_id or new_lot_id(now)
        keys = [
            k.account(org),
            k.lots(org),
            k.lot_expiries(org),
            k.lots_all(org),
            k.ledger(org),
            k.lot(org, lot_id),
        ]
        args = [now, lot_id, kind, amount, expires, source, ref, k.lot_prefix(org)]
        _, repaid = await self.store.run("add_lot", keys, args)
        return Lot(
            lot_id, kind, amount, amount - int(repaid), now, expires, 0, source, ref, int(repaid)
        )

    # --- reading ------------------------------------------------------------------------
    async def has_lot(self, org: str, lot_id: str) -> bool:
        client = self.store.client
        return bool(await self.store.call("lots", client.exists, self.keys.lot(org, lot_id)))

    async def _expire(self, org: str) -> list[int]:
        k = self.keys
        keys = [k.account(org), k.lots(org), k.lot_expiries(org), k.ledger(org), k.holds(org)]
        keys.append(k.held(org))
        raw = await self.store.run(
            "expire", keys, [self.clock.now_ms(), k.lot_prefix(org), k.hold_prefix(org)]
        )
        return [int(x) for x in raw]

    async def balance(self, org: str) -> Balance:
        """The balance now, after applying expiry and releasing expired holds."""
        total, debt, held = await self._expire(org)
        return Balance(total - debt - held, total, debt, held)

    async def lots(self, org: str) -> list[Lot]:
        """Every lot the organization ever had, oldest first, expiry applied."""
        await self._expire(org)
        client = self.store.client
        ids = await self.store.call("lots", client.zrange, self.keys.lots_all(org), 0, -1)
        if not ids:
            return []
        pipe = client.pipeline(transaction=False)
        for lot_id in ids:
            pipe.hgetall(self.keys.lot(org, lot_id))
        hashes = await self.store.call("lots", pipe.execute)
        return [Lot.from_hash(h) for h in hashes if h]

    async def history(self, org: str, limit: int = 50) -> list[Event]:
        """The newest `limit` money events (no per-request usage), newest first, expiry
        applied; read from the ledger database."""
        await self._expire(org)
        raw = await history_of(self.store).money_events(org, limit, newest_first=True)
        return [_event(entry_id, fields) for entry_id, fields in raw]

    async def events(self, org: str) -> list[Event]:
        """Every money event, oldest first; read from the ledger database."""
        raw = await history_of(self.store).money_events(org)
        return [_event(entry_id, fields) for entry_id, fields in raw]

    async def recompute_from_ledger(self, org: str) -> int:
        """The balance the ledger implies: purchases, grants and auto-reloads add their amount;
        prepaid debits take their extra spend; expiries take the expired remainder
        (common.lua ``ledger_effect``, as an SQL sum over the ledger database). The start is
        the account's ``ledger_base`` (what an older version folded out of the stream).
        Equals ``lots_total - debt`` held in Redis (holds are not money yet)."""
        await self._expire(org)
        client = self.store.client
        base = await self.store.call(
            "ledger_base", client.hget, self.keys.account(org), "ledger_base"
        )
        return int(base or 0) + await history_of(self.store).balance_effect(org)

    async def record_event(self, org: str, event_type: str, fields: dict[str, Any]) -> str:
        """Append an event that moves no money (``reload_failed``) to the ledger."""
        if event_type in EVENT_ADDS or event_type in ("debit", "expiry"):
            raise CreditError(f"{event_type!r} events are written by the scripts only")
        entry = {"type": event_type, "ts": str(self.clock.now_ms())}
        entry.update({name: str(value) for name, value in fields.items()})
        client = self.store.client
        return await self.store.call("ledger_event", client.xadd, self.keys.ledger(org), entry)

    # --- auto-reload settings -----------------------------------------------------------
    async def auto_reload_settings(
        self, org: str, configured: AutoReload | None
    ) -> AutoReloadSettings | None:
        """The auto-reload pair in force: run-time overrides first (as settle.lua reads
        them), else `configured` (the config's ``billing.auto_reload`` or None)."""
        client = self.store.client
        off, threshold, target = await self.store.call(
            "reload_settings",
            client.hmget,
            self.keys.overrides(org),
            list(Fields.AUTO_RELOADS),
        )
        if off == "1":
            return None
        if threshold is not None and target is not None:
            return AutoReloadSettings(int(threshold), int(target), "override")
        if configured is None:
            return None
        return AutoReloadSettings(configured.threshold, configured.target, "config")

    async def set_auto_reload(self, org: str, threshold: int, target: int) -> None:
        """Override the auto-reload pair at run time (micro-USD, target > threshold >= 0)."""
        self._check_org(org)
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise CreditError("the threshold must be an amount of 0 or more")
        check_amount(target)
        if target <= threshold:
            raise CreditError(
                f"the target ({format_usd(target)}) must be greater than the threshold "
                f"({format_usd(threshold)})"
            )
        client = self.store.client
        key = self.keys.overrides(org)
        pipe = client.pipeline(transaction=True)
        pair: dict[FieldT, EncodableT] = {
            Fields.AUTO_RELOAD_THRESHOLD: str(threshold),
            Fields.AUTO_RELOAD_TARGET: str(target),
        }
        pipe.hset(key, mapping=pair)
        pipe.hdel(key, Fields.AUTO_RELOAD_OFF)
        await self.store.call("reload_set", pipe.execute)

    async def disable_auto_reload(self, org: str) -> None:
        """Turn auto-reload off at run time, whatever the config says."""
        self._check_org(org)
        client = self.store.client
        key = self.keys.overrides(org)
        pipe = client.pipeline(transaction=True)
        pipe.hset(key, Fields.AUTO_RELOAD_OFF, "1")
        pipe.hdel(key, Fields.AUTO_RELOAD_THRESHOLD, Fields.AUTO_RELOAD_TARGET)
        await self.store.call("reload_set", pipe.execute)

    async def clear_auto_reload(self, org: str) -> None:
        """Drop the run-time overrides: the config's settings apply again."""
        self._check_org(org)
        client = self.store.client
        key = self.keys.overrides(org)
        await self.store.call("reload_set", client.hdel, key, *Fields.AUTO_RELOADS)

    # --- checks ---------------------------------------------------------------------------
    def _check_org(self, org: str) -> None:
        if self.config is None:
            if not org or any(c in org for c in "{}: "):
                raise CreditError(f"invalid organization name {org!r}")
            return
        org_cfg = self.config().organizations.get(org)
        if org_cfg is None:
            raise CreditError(f"unknown organization {org!r}")
        if org_cfg.billing.mode != "prepaid":
            raise CreditError(
                f"organization {org!r} is not prepaid (billing.mode: "
                f"{org_cfg.billing.mode}): its credit would never be used"
            )


def _event(entry_id: str, fields: dict[str, str]) -> Event:
    return Event(entry_id, fields.get("type", ""), int(fields.get("ts") or 0), dict(fields))
