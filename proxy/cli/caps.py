"""`tollway caps show | set | clear`: spend caps on extra usage at run time, on top of
`tollway.limits.caps.Caps`.

A scope is one of ``--org-wide``, ``--workspace W``, ``--tier T``, ``--user U`` or
``--model PATTERN`` (the organization's cap on the models a name or pattern matches);
``--period day|week|month`` (default month) picks the calendar period of
``server.timezone``. Amounts are USD, parsed exactly (at most 6 decimals), or
``unlimited``. A change applies to the very next request on every proxy and stays until
cleared (the YAML applies again). Exit codes as in `tollway.proxy.cli.main`: 1 refused (a
bad amount or pattern), 2 an unknown organization, workspace, tier or user, 3 the store
is unavailable. A refused command changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from tollway.config.overlay import with_users
from tollway.config.schema import Config
from tollway.limits.capplans import ADJECTIVE, PERIODS
from tollway.limits.caps import Caps
from tollway.limits.errors import UnknownName
from tollway.limits.money import format_usd
from tollway.limits.seats import UNLIMITED
from tollway.limits.store import Store
from tollway.limits.users import RuntimeUsers
from tollway.proxy.cli.common import EXIT_USAGE, cap_amount, cap_usd, with_store
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.cli.output import print_rows

CONFIG_HELP = "config file (default: $TOLLWAY_CONFIG, then ./tollway.yaml)"
Action = Callable[[Caps], Coroutine[Any, Any, int]]
# caps.in_force's groups → the scope a row names
GROUPS = (("workspaces", "workspace"), ("tiers", "tier"), ("users", "user"), ("models", "model"))


def _scope(p: Any, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--org-wide", action="store_true", help="the organization's cap")
    g.add_argument("--workspace", metavar="W", help="a workspace's cap")
    g.add_argument("--tier", metavar="T", help="the cap of each user of a seat tier")
    g.add_argument("--user", metavar="U", help="a user's own cap (overrides the tier's)")
    g.add_argument(
        "--model",
        metavar="PATTERN",
        help="the organization's cap on the models a name or pattern matches (claude-opus-*)",
    )


def _common(p: Any, show: bool = False) -> None:
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--config", help=CONFIG_HELP)
    if show:
        p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    else:
        p.add_argument(
            "--period",
            choices=PERIODS,
            default="month",
            help="calendar period of server.timezone (default: month)",
        )


def register(sub: Any) -> None:
    caps = sub.add_parser(
        "caps", help="spend caps (monthly, daily, weekly, per model): show, set, clear"
    )
    csub = caps.add_subparsers(dest="caps_command", required=True, metavar="ACTION")
    p = csub.add_parser(
        "show", help="every cap in force and where it comes from, or those of one scope"
    )
    _scope(p, required=False)
    _common(p, show=True)
    p.set_defaults(func=caps_show)
    p = csub.add_parser("set", help="override a cap at run time (the next request obeys)")
    _scope(p)
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--amount", metavar="USD", help="the cap, up to 6 decimals")
    amount.add_argument("--unlimited", action="store_true", help="no cap at this scope")
    _common(p)
    p.set_defaults(func=caps_set)
    p = csub.add_parser("clear", help="drop a run-time cap: the config's applies again")
    _scope(p)
    _common(p)
    p.set_defaults(func=caps_clear)


def _run(args: Any, action: Action) -> int:
    """Check the organization, then run `action(caps)` against the store with the config
    as the proxies see it (run-time users and model-cap patterns merged in)."""

    async def go(cfg: Config, store: Store) -> int:
        if args.org not in cfg.organizations:
            known = ", ".join(sorted(cfg.organizations)) or "none"
            return _fail(f"unknown organization {args.org!r} (known: {known})", EXIT_USAGE)
        users = RuntimeUsers(store)
        entries = await users.entries(args.org)
        patterns = await users.model_cap_patterns(args.org)
        live = with_users(cfg, {args.org: entries}, {args.org: patterns})
        try:
            return await action(Caps(store, lambda: live))
        except UnknownName as e:
            return _fail(str(e), EXIT_USAGE)

    return with_store(args, go)


def _where(args: Any) -> tuple[str, str | None]:
    if args.org_wide:
        return "org", None
    for scope in ("workspace", "tier", "user", "model"):
        if getattr(args, scope):
            return scope, getattr(args, scope)
    raise AssertionError("argparse requires one scope")


def _rows(caps: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per scope and period: the monthly cap always, a daily or weekly one when
    it is a cap or a run-time override."""

    def of(scope: str, name: str, c: dict[str, Any]) -> list[dict[str, Any]]:
        # "level": the rows' key since `caps show` first printed them (scripts read it).
        out = [{"level": scope, "name": name, "period": "month", **_pair(c)}]
        for period in ("day", "week"):
            entry = c[ADJECTIVE[period]]
            if entry["cap"] is not None or entry["source"] == "override":
                out.append({"level": scope, "name": name, "period": period, **entry})
        return out

    rows = of("organization", "-", caps["organization"])
    for group, scope in GROUPS:
        for name, c in caps[group].items():
            rows += of(scope, name, c)
    return rows


def _pair(c: dict[str, Any]) -> dict[str, Any]:
    return {"cap": c["cap"], "source": c["source"]}


def _only_level(args: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the scope `caps show` was asked for (all rows without one). A workspace,
    tier, user or model cap the organization does not have is an `UnknownName` (exit 2)."""
    if not (args.org_wide or args.workspace or args.tier or args.user or args.model):
        return rows
    scope, name = _where(args)
    if scope == "org":
        return [r for r in rows if r["level"] == "organization"]
    picked = [r for r in rows if r["level"] == scope and r["name"] == name]
    if not picked:
        raise UnknownName(f"unknown {scope} {name!r} in {args.org!r}")
    return picked


def caps_show(args: Any) -> int:
    async def action(caps: Caps) -> int:
        rows = _only_level(args, _rows(await caps.in_force(args.org)))
        if args.format == "json":
            out = [{**r, "cap": {"usd": cap_usd(r["cap"]), "micro": r["cap"]}} for r in rows]
            print(json.dumps(out, indent=2))
            return 0
        cols = ("level", "name", "period", "cap", "source")
        print_rows([{**r, "cap": cap_usd(r["cap"])} for r in rows], cols)
        return 0

    return _run(args, action)


def _what(args: Any, scope: str, name: str | None) -> str:
    where = "organization" if scope == "org" else f"{scope} {name}"
    return f"{ADJECTIVE[args.period]} cap of {where}"


def caps_set(args: Any) -> int:
    async def action(caps: Caps) -> int:
        scope, name = _where(args)
        amount = UNLIMITED if args.unlimited else cap_amount(args.amount)
        await caps.set(args.org, scope, name, amount, args.period)
        shown = UNLIMITED if amount == UNLIMITED else format_usd(int(amount))
        print(f"{args.org}: {_what(args, scope, name)} set to {shown} (run-time override)")
        return 0

    return _run(args, action)


def caps_clear(args: Any) -> int:
    async def action(caps: Caps) -> int:
        scope, name = _where(args)
        removed = await caps.clear(args.org, scope, name, args.period)
        state = "cleared: the config applies" if removed else "had no run-time override"
        print(f"{args.org}: {_what(args, scope, name)} {state}")
        return 0

    return _run(args, action)
