"""What a key is, as stored and shown: its record (`KeyRecord`), the settings an operator
chooses (`KeySettings`, at creation or later), secrets and their digests, and the reading
of the record's hash fields. Pure: no store here (`apikeys.py` has it); what operators
write for the settings is parsed in `keysettings.py`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from tollway.limits.plans import KeyLimits, Principal

SECRET_PREFIX = "tw-"
OLD = "old:"  # record field prefix: old:<digest> = end of that secret's overlap (ms)


LIMITS = ("rpm", "tpm", "input_tpm", "output_tpm")


def parse_limit(name: str, text: str | int | Decimal) -> Decimal | int:
    """A key's per-minute limit: rpm with up to 3 decimals, the others whole; >= 0.
    ValueError naming the limit otherwise."""
    try:
        number = Decimal(str(text).strip())
    except InvalidOperation:
        number = Decimal(-1)
    places = 3 if name == "rpm" else 0
    if not number.is_finite() or number < 0 or -number.as_tuple().exponent > places:  # type: ignore[operator]
        kind = "a number with at most 3 decimals" if places else "a whole number"
        raise ValueError(f"{name}: expected {kind} >= 0, got {text!r}")
    return number if name == "rpm" else int(number)


def limits_from_fields(h: Mapping[str, str]) -> KeyLimits | None:
    """A key's own limits from its record's hash fields (None: it has none)."""
    found: dict[str, Any] = {name: parse_limit(name, h[name]) for name in LIMITS if h.get(name)}
    if h.get("budget"):
        found["budget"] = int(h["budget"])
        found["budget_period"] = h.get("budget_period") or "month"
    if h.get("session_budget"):
        found["session_budget"] = int(h["session_budget"])
    if h.get("max_in_flight"):
        found["max_in_flight"] = int(h["max_in_flight"])
    return KeyLimits(**found) if found else None


def limit_fields(limits: KeyLimits | None) -> dict[str, str]:
    """The record's hash fields of a key's own limits (only those set): the inverse of
    `limits_from_fields`."""
    if limits is None:
        return {}
    out = {name: str(v) for name in LIMITS if (v := getattr(limits, name)) is not None}
    if limits.budget is not None:
        out["budget"], out["budget_period"] = str(limits.budget), limits.budget_period
    if limits.session_budget is not None:
        out["session_budget"] = str(limits.session_budget)
    if limits.max_in_flight is not None:
        out["max_in_flight"] = str(limits.max_in_flight)
    return out


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def parse_list(text: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` → ``("a", "b")``: trimmed, no empties, no duplicates,
    no whitespace or commas inside an entry (ValueError naming `what` otherwise)."""
    items = text.split(",") if isinstance(text, str) else list(text or ())
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if any(c.isspace() or c == "," for c in item) or len(item) > 200:
            raise ValueError(f"{what}: {item!r} is not a valid entry")
        if item not in out:
            out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class KeySettings:
    """What an operator chooses for a key (at creation, or later with `keys set`).
    `models` are patterns (``*`` any text, ``?`` one character; ``gpt-4o*``); empty: every
    model. `expires_ms` None: the key never expires."""

    name: str = ""
    expires_ms: int | None = None
    models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    limits: KeyLimits | None = None  # the key's own rpm/tpm/..., budgets, max_in_flight

    @classmethod
    def from_fields(cls, h: Mapping[str, str]) -> KeySettings:
        """The settings held in a key record's hash fields."""
        expires = h.get("expires")
        return cls(
            name=h.get("name", ""),
            expires_ms=int(expires) if expires else None,
            models=parse_list(h.get("models", ""), "models"),
            tags=parse_list(h.get("tags", ""), "tags"),
            limits=limits_from_fields(h),
        )

    def fields(self) -> dict[str, str]:
        """The record's hash fields of these settings: the inverse of `from_fields`."""
        return {
            "name": self.name,
            "expires": "" if self.expires_ms is None else str(self.expires_ms),
            "models": ",".join(self.models),
            "tags": ",".join(self.tags),
            **limit_fields(self.limits),
        }


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    org: str
    workspace: str | None
    user: str | None
    name: str
    created_ms: int
    revoked: bool
    hint: str  # the first characters of the current secret, to recognize it in a list
    expires_ms: int | None = None
    models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    rotated_ms: int | None = None
    secret: str = ""  # digest of the current secret ("" for keys made before rotation)
    old: dict[str, int] = field(default_factory=dict)  # digest -> end of its overlap (ms)
    legacy_until: int | None = None  # end of overlap of a pre-rotation key's first secret
    limits: KeyLimits | None = None

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> KeyRecord:
        def ms(name: str) -> int | None:
            v = h.get(name)
            return int(v) if v else None

        return cls(
            key_id=h["id"],
            org=h["org"],
            workspace=h.get("ws") or None,
            user=h.get("user") or None,
            name=h.get("name", ""),
            created_ms=int(h.get("created", 0)),
            revoked=h.get("revoked") != "0",
            hint=h.get("hint", ""),
            expires_ms=ms("expires"),
            models=parse_list(h.get("models", ""), "models"),
            tags=parse_list(h.get("tags", ""), "tags"),
            rotated_ms=ms("rotated"),
            secret=h.get("secret", ""),
            old={k[len(OLD) :]: int(v) for k, v in h.items() if k.startswith(OLD)},
            legacy_until=ms("legacy"),
            limits=limits_from_fields(h),
        )

    @property
    def principal(self) -> Principal:
        return Principal(self.org, self.key_id, self.workspace, self.user, self.limits)

    def allows(self, model: str) -> bool:
        """Whether the key may call `model` (no allow-list: every model)."""
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def secret_until(self, d: str) -> int | None:
        """When the secret of digest `d` stops working (ms; None: it lives as the key)."""
        if not self.secret or d == self.secret:
            return None
        return self.old.get(d, self.legacy_until or 0)

    def status(self, now_ms: int) -> str:
        if self.revoked:
            return "revoked"
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return "expired"
        return "active"

    def to_dict(self, now_ms: int) -> dict[str, Any]:
        """The key as JSON (never a secret nor its digest): the CLI's and the admin API's
        shape."""
        ends = [*self.old.values(), self.legacy_until or 0]
        overlaps = [until for until in ends if until > now_ms]
        return {
            "id": self.key_id,
            "org": self.org,
            "workspace": self.workspace,
            "user": self.user,
            "name": self.name,
            "hint": self.hint,
            "created_ms": self.created_ms,
            "created": iso(self.created_ms),
            "revoked": self.revoked,
            "status": self.status(now_ms),
            "expires_ms": self.expires_ms,
            "expires": iso(self.expires_ms),
            "models": list(self.models),
            "tags": list(self.tags),
            "rotated_ms": self.rotated_ms,
            "old_secret_until_ms": max(overlaps, default=None),
            "limits": {
                name: None if v is None else str(v)
                for name in LIMITS
                for v in [getattr(self.limits, name) if self.limits else None]
            },
            "budget_micro": self.limits.budget if self.limits else None,
            "budget_period": self.limits.budget_period if self.limits else None,
            "session_budget_micro": self.limits.session_budget if self.limits else None,
            "max_in_flight": self.limits.max_in_flight if self.limits else None,
        }
