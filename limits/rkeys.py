"""The one place Redis key names are built.

Every key that belongs to an organization carries the hash tag ``{org}`` so that all of them
land on one Redis Cluster slot and every script touching them runs on one node::

    {prefix}:{{org}}:{part}:{part}...      e.g.  tw:{acme}:b:user=alice:tpm

Keys that must be found before the organization is known (the key-hash index, key-id index,
promotional identities) are global and never touched by the metering scripts.

Hash field names live here too (`Scope`, `Fields`): a scope names where a limit or cap
applies (``org``, ``ws=W``, ``user=U``, ``key=K``, ``tier=T``, ``model=M``) and a field is
a rule applied to a scope (``spend:user=U`` in the month hash, ``cap:ws=W`` in the overrides).
The scripts never build a field name: they receive them in their plans.
"""

from __future__ import annotations

import hashlib
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

    def held(self, org: str) -> str:
        """What requests in flight hold: month fields (micro-USD) and in-flight counts."""
        return self.org(org, "held")

    def learned(self, org: str) -> str:
        """What settlement learned of the organization's traffic, per model."""
        return self.org(org, "learned")

    def outputs(self, org: str, model: str) -> str:
        """The latest output token counts of the organization's requests on `model`."""
        return self.org(org, "outputs", model)

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

    def period(self, org: str, label: str) -> str:
        """Spend of one day or week (``d2026-01-31``, ``w2026-W05``), fields as the month
        hash's: what daily and weekly caps and budgets are checked against."""
        return self.org(org, "per", label)

    def alert(self, org: str, what: str) -> str:
        """The claim of one threshold alert (`tollway.limits.alerts`)."""
        return self.org(org, "alert", what)

    def model_caps(self, org: str) -> str:
        """Set of the model names and patterns given a cap at run time (`tollway.limits.caps`):
        their spend is counted from then on, as the YAML's `model_caps` are."""
        return self.org(org, "modelcaps")

    def users(self, org: str) -> str:
        """Users added or changed at run time (`tollway.limits.users`)."""
        return self.org(org, "users")

    def api_keys(self, org: str) -> str:
        return self.org(org, "keys")

    def auto_reload_lock(self, org: str) -> str:
        return self.org(org, "reload")

    def auto_reload_pending(self, org: str) -> str:
        """Auto-reload purchases started and not finished (`tollway.limits.autoreload`)."""
        return self.org(org, "reload_pending")

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


# --- hash field names ------------------------------------------------------------------------
class Scope:
    """Where a limit or cap applies (the organization, a workspace, tier, user, model or
    key), as it appears in field names and bucket keys."""

    ORG = "org"

    @staticmethod
    def ws(name: str) -> str:
        return f"ws={name}"

    @staticmethod
    def user(name: str) -> str:
        return f"user={name}"

    @staticmethod
    def key(key_id: str) -> str:
        return f"key={key_id}"

    @staticmethod
    def tier(name: str) -> str:
        return f"tier={name}"

    @staticmethod
    def model(name: str) -> str:
        return f"model={name}"

    @staticmethod
    def split(scope: str) -> tuple[str, str]:
        """``"user=alice"`` → ``("user", "alice")``; ``"org"`` → ``("org", "")``."""
        kind, _, name = scope.partition("=")
        return kind, name


class Fields:
    """Field names of the organization's hashes.

    Month hash (``Keys.month``): ``spend:<scope>`` (all spend) and ``extra:<scope>`` (the part
    past the included usage). Overrides hash (``Keys.overrides``, run-time settings that win
    over the YAML): ``cap:<scope>`` (a monthly cap, micro-USD or "unlimited"; scopes org,
    ws=W, tier=T, user=U, model=<name or pattern>), ``cap.day:<scope>`` and
    ``cap.week:<scope>`` (daily and weekly caps, the same scopes), ``extra:<scope>``
    (extra usage switch "1"/"0"; org or user=U), ``included:user=U`` and ``seat:user=U``
    (a tier move), ``reload:*`` (auto-reload).
    Day and week hashes (``Keys.period``): the month hash's ``extra:<scope>`` of the scopes
    that can carry a cap and ``spend:key=K`` (what daily and weekly caps and budgets read:
    ``scriptplans.window_fields``).
    Held hash (``Keys.held``): the month fields above, held by requests in flight,
    ``flight:<scope>`` counts and ``sess:<digest>`` (a session's holds). Learned hash
    (``Keys.learned``): ``<kind>:<model>``.
    """

    AUTO_RELOAD_OFF = "reload:off"
    AUTO_RELOAD_THRESHOLD = "reload:threshold"
    AUTO_RELOAD_TARGET = "reload:target"
    AUTO_RELOADS = (AUTO_RELOAD_OFF, AUTO_RELOAD_THRESHOLD, AUTO_RELOAD_TARGET)

    @staticmethod
    def spend(scope: str) -> str:
        """Month hash: all spend of `scope`."""
        return f"spend:{scope}"

    @staticmethod
    def extra(scope: str) -> str:
        """Month hash: spend past the included usage. Overrides hash: the extra usage switch."""
        return f"extra:{scope}"

    @staticmethod
    def cap(scope: str, period: str = "month") -> str:
        """Overrides hash: a cap on extra usage of `period` (month | day | week):
        ``cap:<scope>`` (monthly), ``cap.day:<scope>``, ``cap.week:<scope>``."""
        return f"cap:{scope}" if period == "month" else f"cap.{period}:{scope}"

    @staticmethod
    def included(user: str) -> str:
        """Overrides hash: the user's included amount after a tier move."""
        return f"included:{Scope.user(user)}"

    @staticmethod
    def seat(user: str) -> str:
        """Overrides hash: the user's seat tier after a tier move."""
        return f"seat:{Scope.user(user)}"

    @staticmethod
    def over(field: str) -> str:
        """Month hash: the largest amount by which one request took `field` past its cap."""
        return f"over:{field}"

    @staticmethod
    def in_flight(scope: str) -> str:
        """Held hash: how many admitted requests of `scope` are not settled yet."""
        return f"flight:{scope}"

    @staticmethod
    def session(session_id: str) -> str:
        """Held hash: what a session's requests in flight hold (micro-USD). The id is
        digested: a hold lists its fields separated by spaces, and ids may hold any text."""
        return "sess:" + hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()[:32]

    @staticmethod
    def learned(kind: str, model: str) -> str:
        """Learned hash: ``out`` (the high percentile of output tokens), ``out_n`` (outputs
        seen), ``in_real`` and
        ``in_est`` (real and estimated input tokens, decayed sums), ``in_n`` (their count)."""
        return f"{kind}:{model}"

    @staticmethod
    def split(field: str) -> tuple[str, str]:
        """``"spend:user=alice"`` → ``("spend", "user=alice")``."""
        kind, _, scope = field.partition(":")
        return kind, scope
