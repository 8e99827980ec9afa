"""The one place Redis key names are built.

Every key that belongs to an organization carries the hash tag ``{org}`` so that all of them
land on one Redis Cluster slot and every script touching them runs on one node::

    {prefix}:{{org}}:{part}:{part}...      e.g.  tw:{acme}:b:user=alice:tpm

Keys that must be found before the organization is known (the key-hash index, key-id index,
promotional identities) are global and never touched by the metering scripts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "tw"

    def org(self, org: str, *parts: str) -> str:
        return ":".join((self.prefix, "{" + org + "}", *parts))

    # --- per organization -------------------------------------------------------------
    def bucket(self, org: str, scope: str, kind: str) -> str:
        """A token bucket; scope is ``org``, ``ws=W``, ``user=U``, ``key=K`` or ``model=M``."""
        return self.org(org, "b", scope, kind)

    def hold_prefix(self, org: str) -> str:
        return self.org(org, "hold") + ":"

    def hold(self, org: str, request_id: str) -> str:
        return self.org(org, "hold", request_id)

    def holds(self, org: str) -> str:
        return self.org(org, "holds")

    def settled(self, org: str, request_id: str) -> str:
        return self.org(org, "settled", request_id)

    def account(self, org: str) -> str:
        return self.org(org, "acct")

    def lots(self, org: str) -> str:
        return self.org(org, "lots")

    def lot_expiries(self, org: str) -> str:
        return self.org(org, "lotexp")

    def lots_all(self, org: str) -> str:
        return self.org(org, "lotall")

    def lot(self, org: str, lot_id: str) -> str:
        return self.org(org, "lot", lot_id)

    def lot_prefix(self, org: str) -> str:
        return self.org(org, "lot") + ":"

    def month(self, org: str, month: str) -> str:
        return self.org(org, "mtd", month)

    def day(self, org: str, day: str) -> str:
        return self.org(org, "day", day)

    def session(self, org: str, session_id: str) -> str:
        return self.org(org, "sess", session_id)

    def sessions(self, org: str) -> str:
        """Sorted set of the organization's session ids, scored by their last request end."""
        return self.org(org, "sessions")

    def ledger(self, org: str) -> str:
        return self.org(org, "ledger")

    def overrides(self, org: str) -> str:
        return self.org(org, "cfg")

    def api_key(self, org: str, key_id: str) -> str:
        return self.org(org, "key", key_id)

    def users(self, org: str) -> str:
        """Users added or changed at run time (`tollway.limits.users`)."""
        return self.org(org, "users")

    def api_keys(self, org: str) -> str:
        return self.org(org, "keys")

    def reload_lock(self, org: str) -> str:
        return self.org(org, "reload")

    def limit_requests(self, org: str) -> str:
        return self.org(org, "lir")

    def admin_credential(self, org: str, cred_id: str) -> str:
        return self.org(org, "adm", cred_id)

    def admin_credentials(self, org: str) -> str:
        return self.org(org, "adms")

    # --- global -------------------------------------------------------------------------
    def key_hash(self, digest: str) -> str:
        return f"{self.prefix}:keyhash:{digest}"

    def key_id(self, key_id: str) -> str:
        return f"{self.prefix}:keyid:{key_id}"

    def promo_identity(self, digest: str) -> str:
        return f"{self.prefix}:promo-identity:{digest}"

    def revocations(self) -> str:
        """zset key id -> when it was revoked (ms): what every process polls, so that a
        revocation reaches a process serving fail-open from its cache."""
        return f"{self.prefix}:revocations"

    def admin_hash(self, digest: str) -> str:
        return f"{self.prefix}:admhash:{digest}"

    def admin_id(self, cred_id: str) -> str:
        return f"{self.prefix}:admid:{cred_id}"

    def console_session(self, digest: str) -> str:
        return f"{self.prefix}:console:{digest}"
