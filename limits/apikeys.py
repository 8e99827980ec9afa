"""API keys: random, shown once, stored only as a SHA-256 digest.

A key record lives under its organization's hash tag (``tw:{org}:key:<id>``) and the admit
script reads its ``revoked`` field on every metered request, so a revocation is in force
on every proxy replica at the very next request. Finding the organization from the secret
takes a global index (``tw:keyhash:<digest>``); its answer never changes for a key, so
each process caches it. Unmetered routes, which run no script, re-read a cached entry
older than one second.

Keys are 256-bit random secrets, so a fast digest is the right hash (a slow password
hash protects low-entropy secrets; these have none to protect).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from tollway.limits.errors import UnknownKey
from tollway.limits.plans import Principal
from tollway.limits.store import Store

SECRET_PREFIX = "tw-"
CACHE_SIZE = 100_000
UNMETERED_MAX_AGE = 1.0  # seconds


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    org: str
    workspace: str | None
    user: str | None
    name: str
    created_ms: int
    revoked: bool
    hint: str  # the first characters of the secret, to recognize it in a list

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> KeyRecord:
        return cls(
            key_id=h["id"],
            org=h["org"],
            workspace=h.get("ws") or None,
            user=h.get("user") or None,
            name=h.get("name", ""),
            created_ms=int(h.get("created", 0)),
            revoked=h.get("revoked") != "0",
            hint=h.get("hint", ""),
        )

    @property
    def principal(self) -> Principal:
        return Principal(self.org, self.key_id, self.workspace, self.user)


class ApiKeys:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = store.keys
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def create(
        self,
        org: str,
        now_ms: int,
        workspace: str | None = None,
        user: str | None = None,
        name: str = "",
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns its record and the secret (which is stored nowhere)."""
        secret = new_secret()
        key_id = "key_" + secrets.token_hex(8)
        record = {
            "id": key_id,
            "org": org,
            "ws": workspace or "",
            "user": user or "",
            "name": name,
            "created": str(now_ms),
            "revoked": "0",
            "hint": secret[:7] + "…",
        }
        k = self.keys
        client = self.store.client
        # The record first, the indexes after: a key is usable only once all three exist.
        await self.store.call("key_create", client.hset, k.api_key(org, key_id), mapping=record)
        await self.store.call("key_create", client.sadd, k.api_keys(org), key_id)
        await self.store.call("key_create", client.set, k.key_id(key_id), org)
        await self.store.call("key_create", client.set, k.key_hash(digest(secret)), key_id)
        return KeyRecord.from_hash(record), secret

    async def list(self, org: str) -> list[KeyRecord]:
        client = self.store.client
        ids = sorted(await self.store.call("key_list", client.smembers, self.keys.api_keys(org)))
        out = []
        for key_id in ids:
            h = await self.store.call("key_list", client.hgetall, self.keys.api_key(org, key_id))
            if h:
                out.append(KeyRecord.from_hash(h))
        return sorted(out, key=lambda r: (r.created_ms, r.key_id))

    async def get(self, key_id: str) -> KeyRecord:
        client = self.store.client
        org = await self.store.call("key_get", client.get, self.keys.key_id(key_id))
        if not org:
            raise UnknownKey(f"no key {key_id!r}")
        h = await self.store.call("key_get", client.hgetall, self.keys.api_key(org, key_id))
        if not h:
            raise UnknownKey(f"no key {key_id!r}")
        return KeyRecord.from_hash(h)

    async def revoke(self, key_id: str) -> KeyRecord:
        record = await self.get(key_id)
        await self.store.call(
            "key_revoke",
            self.store.client.hset,
            self.keys.api_key(record.org, key_id),
            "revoked",
            "1",
        )
        return replace(record, revoked=True)

    async def resolve(self, secret: str, max_age: float | None = None) -> Principal:
        """The principal of a secret; `UnknownKey` if there is none or it is revoked.

        A cached answer is used when it is younger than `max_age` seconds (None: any age;
        metered requests pass None because the admit script checks revocation itself)."""
        d = digest(secret)
        hit = self._cache.get(d)
        now = time.monotonic()
        if hit is not None and (max_age is None or now - hit[1] < max_age):
            self._cache.move_to_end(d)
            return hit[0]
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
        principal = KeyRecord.from_hash(h).principal
        self._cache[d] = (principal, now)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def forget(self, secret: str) -> None:
        """Drop a cached principal (the admit script found the key revoked)."""
        self._cache.pop(digest(secret), None)

    def cached(self, secret: str) -> Principal | None:
        """The principal this process resolved for `secret` earlier, if any, whatever its
        age (fail-open serves known keys while the store is unavailable)."""
        hit = self._cache.get(digest(secret))
        return hit[0] if hit is not None else None
