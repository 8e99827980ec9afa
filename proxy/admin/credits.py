"""Admin routes for prepaid credits: balance, lots, history, buy, grant, auto-reload
settings and the payment method (on top of `tollway.limits.credits.Credits`).

Amounts are USD, sent as a string or a JSON number (at most 6 decimals, parsed exactly);
answers carry both exact USD text and integer micro-USD (``*_micro``), in the shapes the
CLI prints with ``--format json``. A refused operation (an organization that is not
prepaid, an amount out of range, an identity already used) is a 400 and changes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from pydantic import Field
from tollway.config.schema import Money, Organization
from tollway.limits.credits import Credits, new_lot_id
from tollway.limits.durations import parse_period
from tollway.limits.lots import Lot, auto_reload_dict
from tollway.proxy.admin.auth import caller
from tollway.proxy.admin.context import (
    BOOL,
    PAYMENTS,
    STR,
    AdminContext,
    ApiError,
    Body,
    answer,
    body,
    ctx,
    org,
    query,
    schema_object,
)
from tollway.proxy.admin.openapi import Param, Route

MAX_EVENTS = 1000


def _credits(c: AdminContext) -> Credits:
    return Credits(c.store, c.clock, lambda: c.cfg)


def payment_dict(org_cfg: Organization) -> dict[str, Any]:
    """The payment method auto-reload uses (from the config; the secret is never shown)."""
    p = org_cfg.billing.payment
    return {
        "provider": p.provider,
        "registered": p.provider != "none",
        "webhook_url": p.webhook_url,
        "signed": p.secret is not None,
    }


async def show(request: web.Request) -> web.Response:
    name, o = org(request)
    credits = _credits(ctx(request))
    settings = await credits.auto_reload_settings(name, o.billing.auto_reload)
    return answer(
        {
            "org": name,
            "mode": o.billing.mode,
            "balance": (await credits.balance(name)).to_dict(),
            "auto_reload": auto_reload_dict(settings, o.billing.payment.provider),
            "payment_method": payment_dict(o),
        }
    )


async def lots(request: web.Request) -> web.Response:
    name, _ = org(request)
    return answer({"lots": [lot.to_dict() for lot in await _credits(ctx(request)).lots(name)]})


async def history(request: web.Request) -> web.Response:
    name, _ = org(request)
    text = query(request, "limit", "50")
    if not text or not text.isdigit() or not 1 <= int(text) <= MAX_EVENTS:
        raise ApiError(400, f"limit: expected an integer from 1 to {MAX_EVENTS}, got {text!r}")
    events = await _credits(ctx(request)).history(name, int(text))
    return answer({"events": [e.to_dict() for e in events]})


class Purchase(Body):
    """Buy credit: usable at once, expires one year later; purchases are not refundable.
    ``charge``: charge the organization's payment method first (the configured payment
    provider); always so for an organization's own credential, which cannot add credit
    without paying. The operator may record a purchase paid another way (the default)."""

    amount: Money
    charge: bool = False


class Grant(Body):
    """Grant promotional credit (used before purchased credit)."""

    amount: Money
    expires_in: str | None = Field(
        None,
        pattern=r"^[0-9]{1,6}[hdw]$",
        description="e.g. 90d, 12w, 48h (default: the organization's promo_expiry_days)",
    )
    identity: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="e.g. a hashed verified phone number: one grant per identity, ever",
    )


async def _added(credits: Credits, name: str, lot: Lot) -> web.Response:
    out = {"lot": lot.to_dict(), "balance": (await credits.balance(name)).to_dict()}
    return answer(out, status=201)


async def buy(request: web.Request) -> web.Response:
    name, o = org(request)
    b = await body(request, Purchase)
    credits = _credits(ctx(request))
    if not (b.charge or not caller(request).operator):
        return await _added(credits, name, await credits.buy(name, b.amount))
    if o.billing.mode != "prepaid":
        raise ApiError(400, f"organization {name!r} is not prepaid: it has no credit to buy")
    provider = request.config_dict.get(PAYMENTS)
    if provider is None or o.billing.payment.provider == "none":
        raise ApiError(402, f"organization {name!r} has no payment method registered")
    lot_id = new_lot_id(ctx(request).clock.now_ms())
    paid = await provider(o).charge(name, b.amount, lot_id)
    if not paid.ok:
        raise ApiError(402, f"the payment was refused: {paid.error}")
    lot = await credits.buy(name, b.amount, ref=paid.payment_id or "", lot_id=lot_id)
    return await _added(credits, name, lot)


async def grant(request: web.Request) -> web.Response:
    name, o = org(request)
    b = await body(request, Grant)
    try:
        period = parse_period(b.expires_in) if b.expires_in else None
    except ValueError as e:
        raise ApiError(400, f"expires_in: {e}") from None
    period = period or timedelta(days=o.billing.promo_expiry_days)
    credits = _credits(ctx(request))
    return await _added(credits, name, await credits.grant(name, b.amount, period, b.identity))


class AutoReloadSet(Body):
    """Run-time auto-reload settings: a threshold and a target (buy target - balance
    when a request leaves less than threshold), or ``enabled: false`` to turn it off
    whatever the config says. ``DELETE`` drops these settings (the config applies)."""

    enabled: bool = True
    threshold: Money | None = None
    target: Money | None = None


async def _auto_reload_answer(request: web.Request, name: str, o: Organization) -> web.Response:
    settings = await _credits(ctx(request)).auto_reload_settings(name, o.billing.auto_reload)
    return answer(
        {"org": name, "auto_reload": auto_reload_dict(settings, o.billing.payment.provider)}
    )


async def get_auto_reload(request: web.Request) -> web.Response:
    name, o = org(request)
    return await _auto_reload_answer(request, name, o)


async def set_auto_reload(request: web.Request) -> web.Response:
    name, o = org(request)
    b = await body(request, AutoReloadSet)
    credits = _credits(ctx(request))
    pair = b.threshold is not None or b.target is not None
    if not b.enabled:
        if pair:
            raise ApiError(400, "enabled: false takes no threshold or target")
        await credits.disable_auto_reload(name)
    elif b.threshold is None or b.target is None:
        raise ApiError(400, "threshold and target: both are required to enable auto-reload")
    else:
        await credits.set_auto_reload(name, b.threshold, b.target)
    return await _auto_reload_answer(request, name, o)


async def clear_auto_reload(request: web.Request) -> web.Response:
    name, o = org(request)
    await _credits(ctx(request)).clear_auto_reload(name)
    return await _auto_reload_answer(request, name, o)


async def payment_method(request: web.Request) -> web.Response:
    name, o = org(request)
    return answer({"org": name, "payment_method": payment_dict(o)})


async def credit_section(c: AdminContext, name: str, o: Organization) -> dict[str, Any]:
    """The credit part of the live-limits answer (prepaid organizations only)."""
    if o.billing.mode != "prepaid":
        return {}
    return {"credit": (await _credits(c).balance(name)).to_dict()}


# --- the route table -------------------------------------------------------------------------

_USD = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{2,6}$"}
_MICRO = {"type": "integer"}
_BALANCE = schema_object(
    ("available", "available_micro"),
    **{f: _USD for f in ("available", "lots_total", "debt", "held")},
    **{f"{f}_micro": _MICRO for f in ("available", "lots_total", "debt", "held")},
)
_LOT = schema_object(
    ("id", "kind", "amount_micro", "remaining_micro", "expires_ms"),
    id=STR,
    kind={"enum": ["purchased", "promotional"]},
    source=STR,
    **{f: _USD for f in ("amount", "remaining", "expired")},
    **{f"{f}_micro": _MICRO for f in ("amount", "remaining", "expired")},
    created=STR,
    expires=STR,
    created_ms=_MICRO,
    expires_ms=_MICRO,
)
_AUTO_RELOAD = schema_object(("enabled",), enabled=BOOL, threshold=_USD, target=_USD, source=STR)
_PAYMENT = schema_object(("provider", "registered"), provider=STR, registered=BOOL)
_ADDED = schema_object(("lot", "balance"), lot=_LOT, balance=_BALANCE)
_AUTO_RELOAD_ANSWER = schema_object(("org", "auto_reload"), org=STR, auto_reload=_AUTO_RELOAD)

ROUTES = [
    Route(
        "GET",
        "/orgs/{org}/credits",
        show,
        "Credit balance, auto-reload settings and payment method.",
        "credits",
        schema_object(
            ("org", "balance"),
            org=STR,
            mode=STR,
            balance=_BALANCE,
            auto_reload=_AUTO_RELOAD,
            payment_method=_PAYMENT,
        ),
    ),
    Route(
        "GET",
        "/orgs/{org}/credits/lots",
        lots,
        "Every credit lot, oldest first, with its remainder and expiry.",
        "credits",
        schema_object(("lots",), lots={"type": "array", "items": _LOT}),
    ),
    Route(
        "GET",
        "/orgs/{org}/credits/history",
        history,
        "Ledger events (purchases, grants, auto-reloads, debits, expiries), newest first.",
        "credits",
        schema_object(("events",), events={"type": "array", "items": {"type": "object"}}),
        query=(
            Param(
                "limit",
                f"How many events (default 50, at most {MAX_EVENTS}).",
                {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS},
            ),
        ),
    ),
    Route(
        "POST",
        "/orgs/{org}/credits/purchases",
        buy,
        "Buy credit (prepaid organizations): usable now, expires in one year.",
        "credits",
        _ADDED,
        status=201,
        body=Purchase,
        refusals=((402, "No payment method registered, or the payment was refused."),),
    ),
    Route(
        "POST",
        "/orgs/{org}/credits/grants",
        grant,
        "Grant promotional credit, optionally once per identity.",
        "credits",
        _ADDED,
        status=201,
        body=Grant,
    ),
    Route(
        "GET",
        "/orgs/{org}/auto-reload",
        get_auto_reload,
        "Auto-reload settings in force (run-time settings, else the config).",
        "credits",
        _AUTO_RELOAD_ANSWER,
    ),
    Route(
        "PUT",
        "/orgs/{org}/auto-reload",
        set_auto_reload,
        "Set auto-reload at run time (threshold and target), or turn it off.",
        "credits",
        _AUTO_RELOAD_ANSWER,
        body=AutoReloadSet,
    ),
    Route(
        "DELETE",
        "/orgs/{org}/auto-reload",
        clear_auto_reload,
        "Drop the run-time auto-reload settings: the config's apply again.",
        "credits",
        _AUTO_RELOAD_ANSWER,
    ),
    Route(
        "GET",
        "/orgs/{org}/payment-method",
        payment_method,
        "The payment method auto-reload charges (set in the config's billing.payment).",
        "credits",
        schema_object(("org", "payment_method"), org=STR, payment_method=_PAYMENT),
    ),
]
