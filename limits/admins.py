"""Organization credentials: the owner, admin and billing roles of the admin API and the
console, created by the operator, shown once, stored only as a SHA-256 digest (like API
keys, see `tollway.limits.apikeys`: 256-bit random secrets need no slow hash).

A credential record lives under its organization's hash tag (``tw:{org}:adm:<id>``), in the
organization's set of credentials; two global indexes find it from its secret
(``tw:admhash:<digest>`` -> id) and from its id (``tw:admid:<id>`` -> org). Nothing is
cached: every admin request reads the record, so a revocation is in force at once on every
replica. Secrets start with ``twa-``, so they are never mistaken for an API key (``tw-``).

What each role may do is decided by the admin API (`tollway.proxy.admin.auth`); this
module only stores who is who.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Literal, get_args

from tollway.limits.apikeys import digest
from tollway.limits.errors import UnknownCredential
from tollway.limits.store import Store

Role = Literal["owner", "admin", "billing"]
ROLES: tuple[str, ...] = get_args(Role)
SECRET_PREFIX = "twa-"


@dataclass(frozen=True, slots=True)
class Credential:
    cred_id: str
    org: str
    role: str  # one of ROLES
    name: str
    created_ms: int
    revoked: bool
    hint: str  # the first characters of the secret, to recognize it in a list

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Credential:
        return cls(
            cred_id=h["id"],
            org=h["org"],
            role=h["role"],
            name=h.get("name", ""),
            created_ms=int(h.get("created", 0)),
            revoked=h.get("revoked") != "0",
            hint=h.get("hint", ""),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.cred_id,
            "org": self.org,
            "role": self.role,
            "name": self.name,
            "created_ms": self.created_ms,
            "revoked": self.revoked,
            "hint": self.hint,
        }


class Credentials:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = store.keys

    async def create(
        self, org: str, role: str, now_ms: int, name: str = ""
    ) -> tuple[Credential, str]:
        """Create a credential; returns its record and the secret (stored nowhere).
        A role outside `ROLES` is a ValueError."""
        if role not in ROLES:
            raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        cred_id = "adm_" + secrets.token_hex(8)
        record = {
            "id": cred_id,
            "org": org,
            "role": role,
            "name": name,
            "created": str(now_ms),
            "revoked": "0",
            "hint": secret[:8] + "…",
        }
        k, client, call = self.keys, self.store.client, self.store.call
        # The record first, the indexes after: usable only once all of them exist.
        await call("admin_create", client.hset, k.admin_credential(org, cred_id), mapping=record)
        await call("admin_create", client.sadd, k.admin_credentials(org), cred_id)
        await call("admin_create", client.set, k.admin_id(cred_id), org)
        await call("admin_create", client.set, k.admin_hash(digest(secret)), cred_id)
        return Credential.from_hash(record), secret

    async def list(self, org: str) -> list[Credential]:
        client, call = self.store.client, self.store.call
        ids = sorted(await call("admin_list", client.smembers, self.keys.admin_credentials(org)))
        out = []
        for cred_id in ids:
            h = await call("admin_list", client.hgetall, self.keys.admin_credential(org, cred_id))
            if h:
                out.append(Credential.from_hash(h))
        return sorted(out, key=lambda c: (c.created_ms, c.cred_id))

    async def get(self, cred_id: str) -> Credential:
        """The record (revoked or not); `UnknownCredential` when there is none."""
        client, call = self.store.client, self.store.call
        org = await call("admin_get", client.get, self.keys.admin_id(cred_id))
        h = await call("admin_get", client.hgetall, self.keys.admin_credential(org or "", cred_id))
        if not org or not h:
            raise UnknownCredential(f"no credential {cred_id!r}")
        return Credential.from_hash(h)

    async def revoke(self, cred_id: str) -> Credential:
        record = await self.get(cred_id)
        key = self.keys.admin_credential(record.org, cred_id)
        await self.store.call("admin_revoke", self.store.client.hset, key, "revoked", "1")
        return replace(record, revoked=True)

    async def active(self, cred_id: str) -> Credential:
        """The record of a credential in force; `UnknownCredential` if unknown or revoked."""
        record = await self.get(cred_id)
        if record.revoked:
            raise UnknownCredential("revoked credential")
        return record

    async def resolve(self, secret: str) -> Credential:
        """The credential of a secret; `UnknownCredential` if there is none or revoked."""
        if not secret.startswith(SECRET_PREFIX):
            raise UnknownCredential("not an organization credential")
        key = self.keys.admin_hash(digest(secret))
        cred_id = await self.store.call("admin_resolve", self.store.client.get, key)
        if not cred_id:
            raise UnknownCredential("unknown credential")
        return await self.active(cred_id)
