"""The plain records of prepaid credit (`Lot`, `Balance`, ledger `Event`, auto-reload
`AutoReloadSettings`) and their JSON shapes (`to_dict`): one shape, shown alike by the admin
API and the CLI (amounts both as USD text and as integer micro-USD, times both as UTC
text and as epoch ms). `tollway.limits.credits` reads and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollway.limits.money import format_usd

# Ledger event fields shown beside the amount, when present.
EVENT_FIELDS = ("lot", "kind", "rid", "model", "key", "user", "ref", "error", "attempt")


def when(ms: int) -> str:
    """An instant as UTC text, ``YYYY-MM-DD HH:MM:SSZ``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Lot:
    id: str
    kind: str  # purchased | promotional
    amount: int  # as bought or granted
    remaining: int  # still usable (0 once expired or used up)
    created_ms: int
    expires_ms: int
    expired: int  # the remainder that expired unused
    source: str  # purchase | grant | reload (the stored name of an auto-reload)
    ref: str  # payment id of an auto-reload, '' otherwise
    repaid: int  # part of the amount that repaid debt when the lot was added

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Lot:
        return cls(
            id=h["id"],
            kind=h["kind"],
            amount=int(h["amount"]),
            remaining=int(h.get("remaining", 0)),
            created_ms=int(h["created"]),
            expires_ms=int(h["expires"]),
            expired=int(h.get("expired", 0)),
            source=h.get("source", ""),
            ref=h.get("ref", ""),
            repaid=int(h.get("repaid", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "amount": format_usd(self.amount),
            "remaining": format_usd(self.remaining),
            "expired": format_usd(self.expired),
            "created": when(self.created_ms),
            "expires": when(self.expires_ms),
            "ref": self.ref or None,
            "amount_micro": self.amount,
            "remaining_micro": self.remaining,
            "expired_micro": self.expired,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
        }


@dataclass(frozen=True, slots=True)
class Balance:
    available: int  # lots_total - debt - held: what admission compares with zero
    lots_total: int  # sum of the active lots' remainders
    debt: int  # left by requests that overshot; repaid first by the next lot
    held: int  # expected extra cost of requests in flight (prepaid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": format_usd(self.available),
            "lots_total": format_usd(self.lots_total),
            "debt": format_usd(self.debt),
            "held": format_usd(self.held),
            "available_micro": self.available,
            "lots_total_micro": self.lots_total,
            "debt_micro": self.debt,
            "held_micro": self.held,
        }


@dataclass(frozen=True, slots=True)
class Event:
    id: str  # stream entry id
    type: str  # purchase | grant | reload | debit | expiry | reload_failed
    ts: int  # ms: when it happened (an expiry: the lot's expiry instant)
    fields: dict[str, str]

    def number(self, name: str) -> int:
        """An integer field (amounts in micro-USD); 0 when absent."""
        return int(self.fields.get(name) or 0)

    def to_dict(self) -> dict[str, Any]:
        amount = self.number("cost") if self.type == "debit" else self.number("amount")
        out: dict[str, Any] = {"id": self.id, "type": self.type, "time": when(self.ts)}
        out["ts_ms"] = self.ts
        out["amount"] = format_usd(amount)
        out["amount_micro"] = amount
        if self.type == "debit":
            out["extra"] = format_usd(self.number("extra"))
        out.update({f: self.fields[f] for f in EVENT_FIELDS if self.fields.get(f)})
        return out


@dataclass(frozen=True, slots=True)
class AutoReloadSettings:
    threshold: int
    target: int
    source: str  # config | override

    def to_dict(self, payment_provider: str) -> dict[str, Any]:
        return {
            "enabled": True,
            "threshold": format_usd(self.threshold),
            "target": format_usd(self.target),
            "source": self.source,
            "payment_provider": payment_provider,
        }


def auto_reload_dict(settings: AutoReloadSettings | None, payment_provider: str) -> dict[str, Any]:
    """An organization's auto-reload as the admin API and the CLI show it."""
    if settings is None:
        return {"enabled": False, "payment_provider": payment_provider}
    return settings.to_dict(payment_provider)
