"""Users and seats at run time: add, change and remove an organization's users without
editing the YAML (`tollway.config.overlay` merges them over the YAML's and states the
precedence: the YAML declares, run-time settings override, clearing falls back).

A user added at run time exists only here; a user declared in the YAML can be changed
here (seat, workspace, limits) but removed only from the YAML. A user's own monthly cap is
the run-time cap override ``cap:user=U`` (`tollway.limits.spend`).

Storage: the hash ``tw:{org}:users``, one JSON entry per user. Each process keeps what it
read for at most `MAX_AGE` (one second), so a change reaches every replica within a
second; the process that made it sees it at once. Every read is handed to `on_read`
(the proxy's `Overlay.update`). The same read (one pipelined round trip) brings the model
names and patterns given a cap at run time (``tw:{org}:modelcaps``, `tollway.limits.caps`),
which the overlay merges into ``model_caps`` so that their spend is counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from tollway.config.schema import Organization
from tollway.limits.errors import LimitsError
from tollway.limits.flights import Flights
from tollway.limits.store import Store

MAX_AGE = 1.0  # seconds a process trusts the run-time users it read
LIMIT_NAMES = ("rpm", "tpm", "input_tpm", "output_tpm")
CLEAR = "default"  # the value that drops a run-time setting (the YAML applies again)
_FORBIDDEN = set("{}:|=")


class UserError(LimitsError):
    """A refused user operation (unknown organization, tier, workspace or user; a user
    that exists already; a bad name or limit). Nothing changed."""


def check_name(user: str) -> str:
    """A user name fit for Redis keys, as the YAML's names are."""
    if (
        not user
        or len(user) > 200
        or any(c in _FORBIDDEN or not c.isprintable() or c.isspace() for c in user)
    ):
        raise UserError(f"invalid user name {user!r}: no whitespace, control characters or {{}}:|=")
    return user


def check_limit(name: str, value: str) -> str:
    """A per-minute limit as stored: a non-negative number (rpm: up to 3 decimals,
    the others whole), as the YAML accepts them."""
    if name not in LIMIT_NAMES:
        raise UserError(f"unknown limit {name!r} (one of: {', '.join(LIMIT_NAMES)})")
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = Decimal(-1)
    places = 3 if name == "rpm" else 0
    if not number.is_finite() or number < 0 or number.as_tuple().exponent < -places:  # type: ignore[operator]
        kind = "a number with at most 3 decimals" if places else "a whole number"
        raise UserError(f"{name}: expected {kind} >= 0, got {value!r}")
    return str(number)


class RuntimeUsers:
    def __init__(
        self,
        store: Store,
        on_read: Callable[[str, Mapping[str, Any], frozenset[str]], None] | None = None,
        max_age: float = MAX_AGE,
    ) -> None:
        self.store = store
        self.on_read = on_read
        self.max_age = max_age
        self._entries: dict[str, dict[str, dict[str, Any]]] = {}
        self._patterns: dict[str, frozenset[str]] = {}
        self._read: dict[str, float] = {}
        self._reads = Flights()  # concurrent re-reads of one organization share one
        self._started = 0  # reads started (a fresh one may overtake an older one)
        self._applied: dict[str, int] = {}  # org -> the latest read whose answer is kept

    async def entries(self, org: str, *, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """user -> run-time entry of `org`; re-read when older than `max_age` (or `fresh`:
        a read that starts now, after a write). Concurrent re-reads share one."""
        if fresh or time.monotonic() - self._read.get(org, -1e9) >= self.max_age:
            await self._reads.run(org, lambda: self._reread(org), new=fresh)
        return self._entries[org]

    async def _reread(self, org: str) -> None:
        self._started += 1
        order = self._started
        pipe = self.store.client.pipeline(transaction=False)
        pipe.hgetall(self.store.keys.users(org))
        pipe.smembers(self.store.keys.model_caps(org))
        raw, patterns = await self.store.call("users_read", pipe.execute)
        if order < self._applied.get(org, 0):
            return  # a read started later (after a write) answered first: it stands
        self._applied[org] = order
        self._entries[org] = {user: orjson.loads(value) for user, value in raw.items()}
        self._patterns[org] = frozenset(patterns)
        self._read[org] = time.monotonic()
        if self.on_read is not None:
            self.on_read(org, self._entries[org], self._patterns[org])

    async def model_cap_patterns(self, org: str, *, fresh: bool = False) -> frozenset[str]:
        """The model names and patterns of `org` given a cap at run time (read with the
        users, within `max_age`, or now with `fresh`)."""
        await self.entries(org, fresh=fresh)
        return self._patterns[org]

    async def _write(self, org: str, user: str, entry: dict[str, Any] | None) -> None:
        client, key = self.store.client, self.store.keys.users(org)
        if entry is None:
            await self.store.call("users_write", client.hdel, key, user)
        else:
            await self.store.call("users_write", client.hset, key, user, orjson.dumps(entry))
        await self.entries(org, fresh=True)

    @staticmethod
    def _check(org_cfg: Organization, org: str, seat: str | None, workspace: str | None) -> None:
        for what, value, known in (
            ("seat tier", seat, org_cfg.seat_tiers),
            ("workspace", workspace, org_cfg.workspaces),
        ):
            if value not in (None, CLEAR) and value not in known:
                names = ", ".join(sorted(known)) or "none defined"
                raise UserError(f"unknown {what} {value!r} in {org!r} (known: {names})")

    async def add(
        self,
        org_cfg: Organization,
        org: str,
        user: str,
        seat: str | None = None,
        workspace: str | None = None,
    ) -> None:
        """Add a user to `org` (whose YAML config is `org_cfg`); refused when the YAML or
        the run time has one of that name."""
        check_name(user)
        self._check(org_cfg, org, seat, workspace)
        entries = await self.entries(org, fresh=True)
        if user in org_cfg.users or (user in entries and entries[user].get("added")):
            raise UserError(f"user {user!r} already exists in {org!r}: use `users set`")
        entry: dict[str, Any] = {"added": True, "limits": {}}
        if seat:
            entry["seat"] = seat
        if workspace:
            entry["workspace"] = workspace
        await self._write(org, user, entry)

    async def set(
        self,
        org_cfg: Organization,
        org: str,
        user: str,
        seat: str | None = None,
        workspace: str | None = None,
        limits: Mapping[str, str] | None = None,
    ) -> None:
        """Change a user's seat, workspace or limits: None leaves a field as it is;
        ``"default"`` drops the run-time setting, so the YAML's applies again."""
        self._check(org_cfg, org, seat, workspace)
        checked = {n: v if v == CLEAR else check_limit(n, v) for n, v in (limits or {}).items()}
        entries = await self.entries(org, fresh=True)
        entry = dict(entries.get(user) or {"added": False, "limits": {}})
        if user not in org_cfg.users and not entry.get("added"):
            raise UserError(f"unknown user {user!r} in {org!r}: add it with `users add`")
        for field, value in (("seat", seat), ("workspace", workspace)):
            if value == CLEAR:
                entry.pop(field, None)
            elif value is not None:
                entry[field] = value
        entry_limits = dict(entry.get("limits", {}))
        for name, value in checked.items():
            if value == CLEAR:
                entry_limits.pop(name, None)
            else:
                entry_limits[name] = value
        entry["limits"] = entry_limits
        if seat is not None:
            await self._drop_tier_move(org, user)
        await self._write(org, user, entry)

    async def _drop_tier_move(self, org: str, user: str) -> None:
        """A seat set here supersedes a tier move made by approving a limit request (its
        seat and included-usage overrides, `tollway.limits.spend`)."""
        client, key = self.store.client, self.store.keys.overrides(org)
        await self.store.call("users_write", client.hdel, key, f"seat:user={user}")
        await self.store.call("users_write", client.hdel, key, f"included:user={user}")

    async def remove(self, org_cfg: Organization, org: str, user: str) -> bool:
        """Remove a user added at run time (True), or drop the run-time settings of a YAML
        user (False: the YAML still declares it). `UserError` for an unknown user."""
        entries = await self.entries(org, fresh=True)
        if user not in entries and user not in org_cfg.users:
            raise UserError(f"unknown user {user!r} in {org!r}")
        await self._write(org, user, None)
        return user not in org_cfg.users


def _number(value: Any) -> str | None:
    if value is None:
        return None
    d = Decimal(value)
    return str(int(d)) if d == d.to_integral() else str(d.normalize())


def describe(
    org_cfg: Organization, declared: bool, user: str, entry: Mapping[str, Any] | None
) -> dict:
    """A user as in force now: `org_cfg` is the organization with run-time users merged
    in, `declared` whether the YAML declares the user, `entry` its run-time settings.
    ``source``: config | runtime (added at run time) | config+runtime (changed)."""
    u = org_cfg.users[user]
    source = "config" if entry is None else ("config+runtime" if declared else "runtime")
    return {
        "user": user,
        "seat": u.seat,
        "workspace": u.workspace,
        "limits": {name: _number(getattr(u.limits, name)) for name in LIMIT_NAMES},
        "source": source,
        "runtime": dict(entry or {}),
    }
