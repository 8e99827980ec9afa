"""API keys: random, shown once, stored only as a SHA-256 digest.

A key record lives under its organization's hash tag (``tw:{org}:key:<id>``) and the admit
script reads its ``revoked`` field on every metered request, so a revocation is in force
on every proxy replica at the very next request. Revocations also go on a global list
that every process polls each second (`poll_revocations`): a process serving fail-open
from its cache while the store is away never serves a key revoked before the outage.
Finding the record from the secret takes a global index (``tw:keyhash:<digest>`` → key
id); each process caches the record it found for at most `MAX_AGE` (one second), so what
an operator changes on a key (a rotation's overlap ending, say) reaches every replica
within a second.

What an operator sets on a key (`KeySettings`): a name, an expiry, a model allow-list of
patterns, tags, its own limits and budgets; `update` changes them later (`keys set`),
in force on every replica within `MAX_AGE`. Expiry and a rotated secret's end of overlap
are instants checked against the injected clock on every request, cached or not: an
expired key is refused exactly on time. Rotation gives the key a new secret; the old one
keeps working until the overlap window ends (the record holds ``old:<digest>`` → end of
overlap).

Keys are 256-bit random secrets, so a fast digest is the right hash (a slow password
hash protects low-entropy secrets; these have none to protect).
"""

from __future__ import annotations

import builtins
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace

from tollway.limits.clock import Clock, SystemClock
from tollway.limits.errors import ExpiredKey, UnknownKey
from tollway.limits.flights import Flights
from tollway.limits.keyrecord import (
    LIMITS,
    OLD,
    SECRET_PREFIX,
    KeyRecord,
    KeySettings,
    digest,
    iso,
    new_secret,
    parse_limit,
    parse_list,
)
from tollway.limits.plans import Principal
from tollway.limits.store import Store

__all__ = [
    "LIMITS",
    "SECRET_PREFIX",
    "ApiKeys",
    "KeyRecord",
    "KeySettings",
    "digest",
    "iso",
    "new_secret",
    "parse_limit",
    "parse_list",
]

CACHE_SIZE = 100_000
MAX_AGE = 1.0  # seconds a process trusts a key record it read
REVOCATION_POLL = 1.0  # seconds between two polls of the revocation list
# Each poll re-reads the last minute too: revocation times come from other machines' clocks.
REVOCATION_SLACK_MS = 60_000
REVOCATIONS_KEPT_MS = 90 * 86_400_000  # a revocation stays on the polled list 90 days
UNMETERED_MAX_AGE = MAX_AGE  # the same bound on every route now (the name callers use)
DEFAULT_OVERLAP_MS = 24 * 3_600_000  # a rotated secret keeps working this long by default


class ApiKeys:
    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.keys = store.keys
        self.clock = clock or SystemClock()
        # digest -> (record, monotonic time it was read)
        self._cache: OrderedDict[str, tuple[KeyRecord, float]] = OrderedDict()
        # Key ids revoked, as last polled (`poll_revocations`), and when that poll ran (ms).
        self.revoked: set[str] = set()
        self._polled_ms = 0
        self._reads = Flights()  # concurrent misses of one secret share one read

    async def create(
        self,
        org: str,
        now_ms: int,
        workspace: str | None = None,
        user: str | None = None,
        name: str = "",
        settings: KeySettings | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns its record and the secret (which is stored nowhere)."""
        s = settings or KeySettings(name=name)
        secret = new_secret()
        key_id = "key_" + secrets.token_hex(8)
        record = {
            "id": key_id,
            "org": org,
            "ws": workspace or "",
            "user": user or "",
            "created": str(now_ms),
            "revoked": "0",
            "hint": secret[:7] + "…",
            "secret": digest(secret),
            **s.fields(),
            "name": s.name or name,
        }
        k = self.keys
        client = self.store.client
        # The record first, the indexes after: a key is usable only once all three exist.
        await self.store.call("key_create", client.hset, k.api_key(org, key_id), mapping=record)
        await self.store.call("key_create", client.sadd, k.api_keys(org), key_id)
        await self.store.call("key_create", client.set, k.key_id(key_id), org)
        await self.store.call("key_create", client.set, k.key_hash(digest(secret)), key_id)
        return KeyRecord.from_hash(record), secret

    async def update(self, key_id: str, fields: Mapping[str, str]) -> KeyRecord:
        """Change a key's settings: `fields` are record hash fields as
        `keysettings.record_fields` makes them ("" clears one). Every proxy reads the change
        within `MAX_AGE` (this process at once). `UnknownKey` for a revoked key."""
        record = await self.get(key_id)
        if record.revoked:
            raise UnknownKey(f"key {key_id!r} is revoked: create a new key instead")
        if fields:
            await self.store.call(
                "key_update",
                self.store.client.hset,
                self.keys.api_key(record.org, key_id),
                mapping=dict(fields),
            )
        self._forget_key(key_id)
        return await self.get(key_id)

    async def list(self, org: str) -> list[KeyRecord]:
        client = self.store.client
        ids = sorted(await self.store.call("key_list", client.smembers, self.keys.api_keys(org)))
        pipe = client.pipeline(transaction=False)
        for key_id in ids:
            pipe.hgetall(self.keys.api_key(org, key_id))
        hashes = await self.store.call("key_list", pipe.execute) if ids else []
        out = [KeyRecord.from_hash(h) for h in hashes if h]
        return sorted(out, key=lambda r: (r.created_ms, r.key_id))

    async def names(self, org: str) -> dict[str, str]:
        """key id -> name of every key of `org` that has one (for reports by key)."""
        return {r.key_id: r.name for r in await self.list(org) if r.name}

    async def get(self, key_id: str) -> KeyRecord:
        client = self.store.client
        org = await self.store.call("key_get", client.get, self.keys.key_id(key_id))
        if not org:
            raise UnknownKey(f"no key {key_id!r}")
        h = await self.store.call("key_get", client.hgetall, self.keys.api_key(org, key_id))
        if not h:
            raise UnknownKey(f"no key {key_id!r}")
        return KeyRecord.from_hash(h)

    async def poll_revocations(self) -> None:
        """Read the revocations made since the last poll (all of them the first time) into
        `revoked`. A process polls every second while the store answers, so when the store
        goes away it knows every revocation made up to about a second before, and
        fail-open never serves those keys from its cache. StoreUnavailable propagates."""
        client = self.store.client
        since = max(self._polled_ms - REVOCATION_SLACK_MS, 0) if self._polled_ms else 0
        now = self.clock.now_ms()
        found = await self.store.call(
            "key_revocations", client.zrangebyscore, self.keys.revocations(), since, "+inf"
        )
        # Cached records stay: `cached` refuses them, and `record` still tells the handler
        # that a secret belongs to a revoked key (401, not "store unavailable").
        self.revoked.update(found)
        self._polled_ms = now

    async def revoke(self, key_id: str) -> KeyRecord:
        record = await self.get(key_id)
        await self.store.call(
            "key_revoke",
            self.store.client.hset,
            self.keys.api_key(record.org, key_id),
            "revoked",
            "1",
        )
        # Then the list every process polls (`poll_revocations`); kept REVOCATIONS_KEPT.
        now = self.clock.now_ms()
        revocations = self.keys.revocations()
        client = self.store.client
        await self.store.call("key_revoke", client.zadd, revocations, {key_id: now})
        cutoff = now - REVOCATIONS_KEPT_MS
        await self.store.call("key_revoke", client.zremrangebyscore, revocations, 0, cutoff)
        self._forget_key(key_id)
        return replace(record, revoked=True)

    # `builtins.list`: in this class body `list` names the method above.
    async def revoke_user(self, org: str, user: str) -> builtins.list[str]:
        """Revoke every live key of a user (removed from the organization): their ids."""
        ids = [r.key_id for r in await self.list(org) if r.user == user and not r.revoked]
        for key_id in ids:
            await self.revoke(key_id)
        return ids

    async def rotate(
        self, key_id: str, now_ms: int, overlap_ms: int = DEFAULT_OVERLAP_MS
    ) -> tuple[KeyRecord, str]:
        """Give the key a new secret (returned, stored nowhere); the current one keeps
        working until ``now_ms + overlap_ms``, then is refused (401). Secrets rotated out
        earlier keep their own, earlier end. Refused (`UnknownKey`) for a revoked key."""
        record = await self.get(key_id)
        if record.revoked:
            raise UnknownKey(f"key {key_id!r} is revoked: create a new key instead")
        secret = new_secret()
        until = now_ms + max(0, overlap_ms)
        fields = {"secret": digest(secret), "hint": secret[:7] + "…", "rotated": str(now_ms)}
        if record.secret:
            fields[OLD + record.secret] = str(until)
        else:  # a key made before rotation existed: its first secret's digest is unknown
            fields["legacy"] = str(until)
        k, client = self.keys, self.store.client
        await self.store.call(
            "key_rotate", client.hset, k.api_key(record.org, key_id), mapping=fields
        )
        await self.store.call("key_rotate", client.set, k.key_hash(digest(secret)), key_id)
        if record.secret:
            # The old index entry goes a day after the overlap (a relative time: the server's
            # clock is not the injected one); until then the record refuses it on time.
            old = k.key_hash(record.secret)
            ttl = max(0, overlap_ms) + 86_400_000
            await self.store.call("key_rotate", client.pexpire, old, ttl)
        self._forget_key(key_id)
        return await self.get(key_id), secret

    async def resolve(self, secret: str, max_age: float | None = MAX_AGE) -> Principal:
        """The principal of a secret. `UnknownKey` if there is none or it is revoked;
        `ExpiredKey` (a subclass) when the key expired or the secret was rotated out and
        its overlap ended.

        A cached record is used when it is younger than `max_age` seconds, and never when
        older than `MAX_AGE` (None: `MAX_AGE`); expiry instants are checked against the
        clock whether the record is cached or not."""
        record = await self._record(secret, MAX_AGE if max_age is None else min(max_age, MAX_AGE))
        self._check(record, digest(secret))
        return record.principal

    async def _record(self, secret: str, max_age: float) -> KeyRecord:
        d = digest(secret)
        hit = self._cache.get(d)
        if hit is not None and time.monotonic() - hit[1] < max_age:
            if hit[0].key_id in self.revoked:
                self._cache.pop(d, None)
                raise UnknownKey("revoked key")
            self._cache.move_to_end(d)
            return hit[0]
        # A read already in flight started after this cache entry went stale: its answer
        # is younger than `max_age` when it arrives.
        return await self._reads.run(d, lambda: self._read(d))

    async def _read(self, d: str) -> KeyRecord:
        """Read the record of digest `d` from the store into the cache."""
        now = time.monotonic()
        client = self.store.client
        key_id = await self.store.call("key_resolve", client.get, self.keys.key_hash(d))
        if not key_id:
            self._cache.pop(d, None)
            raise UnknownKey("unknown key")
        org = await self.store.call("key_resolve", client.get, self.keys.key_id(key_id))
        h = await self.store.call(
            "key_resolve", client.hgetall, self.keys.api_key(org or "", key_id)
        )
        if not h or h.get("revoked") != "0":
            self._cache.pop(d, None)
            raise UnknownKey("revoked key")
        record = KeyRecord.from_hash(h)
        self._cache[d] = (record, now)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return record

    def _check(self, record: KeyRecord, d: str) -> None:
        now = self.clock.now_ms()
        if record.expires_ms is not None and now >= record.expires_ms:
            raise ExpiredKey(f"This API key expired at {iso(record.expires_ms)}.")
        until = record.secret_until(d)
        if until is not None and now >= until:
            raise ExpiredKey(
                f"This API key was rotated: its old secret stopped working at {iso(until)}. "
                "Use the new secret."
            )

    def record(self, secret: str) -> KeyRecord | None:
        """The record this process read for `secret` (after `resolve`), whatever its age."""
        hit = self._cache.get(digest(secret))
        return hit[0] if hit is not None else None

    def forget(self, secret: str) -> None:
        """Drop a cached record (the admit script found the key revoked)."""
        self._cache.pop(digest(secret), None)

    def _forget_key(self, key_id: str) -> None:
        """Drop every cached secret of a key this process changed (others re-read within
        `MAX_AGE`)."""
        for d in [d for d, (r, _) in self._cache.items() if r.key_id == key_id]:
            del self._cache[d]

    def cached(self, secret: str) -> Principal | None:
        """The principal this process resolved for `secret` earlier, if any, whatever its
        age (fail-open serves known keys while the store is unavailable); None when that
        key has expired since, or was revoked (as `poll_revocations` last saw)."""
        record = self.record(secret)
        if record is None or record.key_id in self.revoked:
            return None
        try:
            self._check(record, digest(secret))
        except ExpiredKey:
            return None
        return record.principal
