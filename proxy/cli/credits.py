"""`tollway credits buy | grant | show | history | auto-reload`.

Amounts are USD on the command line, parsed exactly (`tollway.limits.money.parse_usd`, at most 6
decimals, never a float) and printed with `format_usd`. Durations (``--expires-in``) are
``<N>h``, ``<N>d`` or ``<N>w``. Exit codes as in `tollway.proxy.cli.common`: 1 the operation was
refused (bad amount, identity already used...), 2 usage or config errors (unknown organization),
3 the store is unavailable. A refused operation changes nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from tollway.config.schema import Config, Organization
from tollway.limits.clock import SystemClock
from tollway.limits.credits import Balance, Credits, Event, Lot
from tollway.limits.durations import parse_period
from tollway.limits.lots import EVENT_FIELDS, auto_reload_dict, when
from tollway.limits.money import format_usd, parse_usd
from tollway.limits.store import Store
from tollway.proxy.cli.common import EXIT_REFUSED, EXIT_USAGE, with_store
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.cli.output import print_rows


def _common(p: Any, fmt: bool = True) -> None:
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--config", help="config file (default: $TOLLWAY_CONFIG, ./tollway.yaml)")
    if fmt:
        p.add_argument(
            "--format",
            choices=("table", "json"),
            default="table",
            help="table for people (default) or json",
        )


def register(sub: Any) -> None:
    credits = sub.add_parser("credits", help="prepaid credits: buy, grant, show, auto-reload")
    csub = credits.add_subparsers(dest="credits_command", required=True, metavar="ACTION")

    p = csub.add_parser("buy", help="buy credit: usable now, expires in one year")
    p.add_argument("--amount", required=True, help="USD, up to 6 decimals")
    _common(p)
    p.set_defaults(func=buy)

    p = csub.add_parser("grant", help="grant promotional credit (used before purchased)")
    p.add_argument("--amount", required=True, help="USD, up to 6 decimals")
    p.add_argument("--expires-in", help="e.g. 90d, 12w, 48h (default: billing.promo_expiry_days)")
    p.add_argument("--identity", help="e.g. a hashed verified phone number: one grant per identity")
    _common(p)
    p.set_defaults(func=grant)

    p = csub.add_parser("show", help="balance, lots with their expiry, recent events")
    p.add_argument("--events", type=int, default=10, help="recent events to show (default 10)")
    _common(p)
    p.set_defaults(func=show)

    p = csub.add_parser("history", help="ledger events, newest first")
    p.add_argument("--limit", type=int, default=50, help="events to show (default 50)")
    _common(p)
    p.set_defaults(func=history)

    p = csub.add_parser("auto-reload", help="change auto-reload at run time")
    p.add_argument("--threshold", help="USD: buy when a request leaves less than this")
    p.add_argument("--target", help="USD: buy up to this balance")
    p.add_argument("--off", action="store_true", help="no auto-reload, whatever the config says")
    p.add_argument(
        "--clear", action="store_true", help="drop run-time settings: the config's apply"
    )
    _common(p)
    p.set_defaults(func=auto_reload)


# --- helpers ---------------------------------------------------------------------------------
def _amount(text: str, what: str = "amount") -> int:
    """USD text → micro-USD, or ValueError with a message naming the option."""
    try:
        micro = parse_usd(text)
    except ValueError as e:
        raise ValueError(f"invalid {what} {text!r}: {e}") from None
    return micro


def _run(args: Any, action: Callable[[Credits, Organization], Coroutine[Any, Any, int]]) -> int:
    """Check the organization, then run `action(credits, org_cfg)` against the store."""

    async def go(cfg: Config, store: Store) -> int:
        org_cfg = cfg.organizations.get(args.org)
        if org_cfg is None:
            known = ", ".join(sorted(cfg.organizations)) or "none"
            return _fail(f"unknown organization {args.org!r} (known: {known})", EXIT_USAGE)
        return await action(Credits(store, SystemClock(), lambda: cfg), org_cfg)

    return with_store(args, go)


def _events_table(events: list[Event]) -> None:
    rows = []
    for e in events:
        d = e.to_dict()
        d["detail"] = " ".join(f"{f}={d[f]}" for f in EVENT_FIELDS if f in d)
        rows.append(d)
    print_rows(rows, ("time", "type", "amount", "detail"))


# The JSON shapes above are shared with the admin API (proxy/admin/credits.py).


# --- commands ----------------------------------------------------------------------------
def _added(args: Any, lot: Lot, balance: Balance) -> int:
    if args.format == "json":
        print(json.dumps({"lot": lot.to_dict(), "balance": balance.to_dict()}))
    else:
        expires = when(lot.expires_ms)
        print(f"{lot.kind} lot {lot.id}: {format_usd(lot.amount)} USD, expires {expires}")
        if lot.repaid:
            print(f"repaid debt: {format_usd(lot.repaid)} USD")
        print(f"available:   {format_usd(balance.available)} USD")
    return 0


def buy(args: Any) -> int:
    try:
        amount = _amount(args.amount)
    except ValueError as e:
        return _fail(str(e), EXIT_REFUSED)

    async def action(credits: Credits, org_cfg: Organization) -> int:
        lot = await credits.buy(args.org, amount)
        return _added(args, lot, await credits.balance(args.org))

    return _run(args, action)


def grant(args: Any) -> int:
    try:
        amount = _amount(args.amount)
    except ValueError as e:
        return _fail(str(e), EXIT_REFUSED)
    try:
        expires_in = parse_period(args.expires_in) if args.expires_in else None
    except ValueError as e:
        return _fail(f"--expires-in: {e}", EXIT_USAGE)

    async def action(credits: Credits, org_cfg: Organization) -> int:
        period = expires_in or timedelta(days=org_cfg.billing.promo_expiry_days)
        lot = await credits.grant(args.org, amount, period, args.identity)
        return _added(args, lot, await credits.balance(args.org))

    return _run(args, action)


def show(args: Any) -> int:
    async def action(credits: Credits, org_cfg: Organization) -> int:
        balance = await credits.balance(args.org)
        lots = await credits.lots(args.org)
        events = await credits.history(args.org, max(args.events, 0))
        settings = await credits.auto_reload_settings(args.org, org_cfg.billing.auto_reload)
        shown = auto_reload_dict(settings, org_cfg.billing.payment.provider)
        if args.format == "json":
            out = {
                "org": args.org,
                "mode": org_cfg.billing.mode,
                "balance": balance.to_dict(),
                "auto_reload": shown,
                "lots": [lot.to_dict() for lot in lots],
                "events": [e.to_dict() for e in events],
            }
            print(json.dumps(out))
            return 0
        print(f"organization {args.org} ({org_cfg.billing.mode})")
        print(f"available:   {format_usd(balance.available)} USD")
        print(f"lots:        {format_usd(balance.lots_total)} USD")
        print(f"debt:        {format_usd(balance.debt)} USD")
        print(f"held:        {format_usd(balance.held)} USD (requests in flight)")
        if shown["enabled"]:
            print(
                f"auto-reload: below {shown['threshold']} USD, up to {shown['target']} USD "
                f"({shown['source']}; payment: {shown['payment_provider']})"
            )
        else:
            print(f"auto-reload: off (payment: {shown['payment_provider']})")
        print()
        if lots:
            cols = ("id", "kind", "amount", "remaining", "expires", "expired", "source")
            print_rows([lot.to_dict() for lot in lots], cols)
        else:
            print("no lots")
        if events:
            print()
            _events_table(events)
        return 0

    return _run(args, action)


def history(args: Any) -> int:
    async def action(credits: Credits, org_cfg: Organization) -> int:
        events = await credits.history(args.org, max(args.limit, 0))
        if args.format == "json":
            print(json.dumps([e.to_dict() for e in events]))
        elif events:
            _events_table(events)
        else:
            print("no events")
        return 0

    return _run(args, action)


def auto_reload(args: Any) -> int:
    pair = args.threshold is not None or args.target is not None
    if sum((pair, args.off, args.clear)) != 1:
        return _fail("give --threshold and --target, or --off, or --clear", EXIT_USAGE)
    if pair and (args.threshold is None or args.target is None):
        return _fail("--threshold and --target go together", EXIT_USAGE)
    try:
        threshold = _amount(args.threshold, "threshold") if pair else 0
        target = _amount(args.target, "target") if pair else 0
    except ValueError as e:
        return _fail(str(e), EXIT_REFUSED)

    async def action(credits: Credits, org_cfg: Organization) -> int:
        if args.clear:
            await credits.clear_auto_reload(args.org)
        elif args.off:
            await credits.disable_auto_reload(args.org)
        else:
            await credits.set_auto_reload(args.org, threshold, target)
        settings = await credits.auto_reload_settings(args.org, org_cfg.billing.auto_reload)
        shown = auto_reload_dict(settings, org_cfg.billing.payment.provider)
        if args.format == "json":
            print(json.dumps({"org": args.org, "auto_reload": shown}))
        elif shown["enabled"]:
            print(
                f"auto-reload of {args.org}: below {shown['threshold']} USD, up to "
                f"{shown['target']} USD ({shown['source']})"
            )
        else:
            print(f"auto-reload of {args.org}: off")
        if shown["enabled"] and shown["payment_provider"] == "none":
            print(
                "note: no payment method is registered (billing.payment.provider: none), "
                "so nothing will be bought",
                file=sys.stderr,
            )
        return 0

    return _run(args, action)
