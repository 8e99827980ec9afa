"""`tollway spend | extra-usage | requests | statement`: month-to-date spend, extra usage
at run time, limit-increase requests and month-end statements (`tollway caps`:
`tollway.proxy.cli.caps`).

Amounts are USD on the command line, parsed exactly (`tollway.limits.money.parse_usd`, at most 6
decimals, never a float), or ``unlimited``; output gives USD text and, in JSON, the exact
micro-USD next to it (``*_micro``). Months are ``YYYY-MM`` in ``server.timezone``; the
default is the current month (system clock). Run-time changes apply to the very next
request on every proxy and stay until cleared (the YAML applies again). Exit codes as in
`tollway.proxy.cli.main`: 1 refused (no pending request, bad amount...), 2 usage or config errors
(unknown organization, user, tier or workspace), 3 the store is unavailable. A refused
command changes nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from tollway.config.overlay import with_users
from tollway.config.schema import Config
from tollway.limits.clock import SystemClock
from tollway.limits.increases import LimitIncreases
from tollway.limits.money import format_usd
from tollway.limits.spend import Spend, UnknownName
from tollway.limits.statement import statement_csv
from tollway.limits.store import Store
from tollway.limits.users import RuntimeUsers
from tollway.proxy.cli.common import EXIT_USAGE, cap_amount, cap_usd, with_store
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.cli.output import print_rows

CONFIG_HELP = "config file (default: $TOLLWAY_CONFIG, then ./tollway.yaml)"
Action = Callable[[Spend], Coroutine[Any, Any, int]]


def _common(p: Any, formats: tuple[str, ...] | None = ("table", "json")) -> None:
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--config", help=CONFIG_HELP)
    if formats:
        p.add_argument("--format", choices=formats, default="table", help="output format")


def register(sub: Any) -> None:
    p = sub.add_parser("spend", help="month-to-date spend: included and extra usage")
    p.add_argument("--month", metavar="YYYY-MM", help="default: the current month")
    p.add_argument(
        "--by",
        choices=("user", "workspace", "key"),
        default="user",
        help="one row per user (default), workspace or key, then the organization's total",
    )
    _common(p)
    p.set_defaults(func=spend_cmd)

    p = sub.add_parser("extra-usage", help="allow or stop usage past the seats' included usage")
    p.add_argument(
        "action",
        choices=("enable", "disable", "clear"),
        help="enable or disable at run time, or clear the run-time setting (the config's "
        "applies); disabling for the organization disables it for everyone",
    )
    p.add_argument("--user", metavar="U", help="one user (default: the whole organization)")
    _common(p, None)
    p.set_defaults(func=extra_usage)

    req = sub.add_parser("requests", help="limit-increase requests: list, approve, deny")
    rsub = req.add_subparsers(dest="requests_command", required=True, metavar="ACTION")
    p = rsub.add_parser("list", help="pending requests with each user's seat, spend and cap")
    _common(p)
    p.set_defaults(func=requests_list)
    p = rsub.add_parser("approve", help="raise the user's cap or move them to a tier")
    p.add_argument("--user", required=True, metavar="U", help="whose pending request")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--cap", metavar="USD", help="the user's new monthly cap, or 'unlimited'")
    how.add_argument("--tier", metavar="T", help="move the user to this seat tier")
    p.add_argument("--note", default="", help="a note kept with the decision")
    _common(p)
    p.set_defaults(func=requests_approve)
    p = rsub.add_parser("deny", help="deny the user's pending request")
    p.add_argument("--user", required=True, metavar="U", help="whose pending request")
    p.add_argument("--note", default="", help="a note kept with the decision")
    _common(p)
    p.set_defaults(func=requests_deny)

    p = sub.add_parser("statement", help="month-end usage statement, per user and in total")
    p.add_argument("--month", metavar="YYYY-MM", help="default: the current month")
    _common(p, ("table", "json", "csv"))
    p.set_defaults(func=statement)


# --- helpers ---------------------------------------------------------------------------------
def _when(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _run(args: Any, action: Action) -> int:
    """Check the organization, then run `action(spend)` against the store. An unknown
    name is a usage error (2); any other refusal exits 1 (see `with_store`)."""

    async def go(cfg: Config, store: Store) -> int:
        if args.org not in cfg.organizations:
            known = ", ".join(sorted(cfg.organizations)) or "none"
            return _fail(f"unknown organization {args.org!r} (known: {known})", EXIT_USAGE)
        # Users added or changed at run time count like YAML users.
        live = with_users(cfg, {args.org: await RuntimeUsers(store).entries(args.org)})
        try:
            return await action(Spend(store, SystemClock(), lambda: live))
        except UnknownName as e:
            return _fail(str(e), EXIT_USAGE)

    return with_store(args, go)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# --- commands ----------------------------------------------------------------------------
def spend_cmd(args: Any) -> int:
    async def action(spend: Spend) -> int:
        mtd = await spend.month_to_date(args.org, args.month)
        group = {"user": "users", "workspace": "workspaces", "key": "keys"}[args.by]
        if args.format == "json":
            out = {k: mtd[k] for k in ("org", "month", "timezone")}
            out["period_start"] = _when(mtd["period_start_ms"])
            out["period_end"] = _when(mtd["period_end_ms"])
            for name in ("organization", "workspaces", "users", "keys"):
                out[name] = (
                    _line_json(mtd[name])
                    if name == "organization"
                    else {n: _line_json(v) for n, v in mtd[name].items()}
                )
            for name in ("held", "overshoot"):
                out[name] = {f: {"usd": format_usd(v), "micro": v} for f, v in mtd[name].items()}
            _print_json(out)
            return 0
        print(
            f"{args.org} {mtd['month']} ({mtd['timezone']}), resets {_when(mtd['period_end_ms'])}"
        )
        rows = [{args.by: n, **_line_usd(v)} for n, v in mtd[group].items()]
        rows.append({args.by: "TOTAL", **_line_usd(mtd["organization"])})
        print_rows(rows, (args.by, "spend", "included", "extra"))
        # Requests in flight hold their expected cost; a cap overshot says by how much.
        for f, v in mtd["held"].items():
            print(f"held in flight  {f}  {format_usd(v)}")
        for f, v in mtd["overshoot"].items():
            print(f"cap overshot    {f}  {format_usd(v)} (the largest part of one request)")
        return 0

    return _run(args, action)


def _line_json(line: dict[str, int]) -> dict[str, Any]:
    return {**_line_usd(line), **{f"{k}_micro": v for k, v in line.items()}}


def _line_usd(line: dict[str, int]) -> dict[str, str]:
    return {k: format_usd(v) for k, v in line.items()}


def extra_usage(args: Any) -> int:
    async def action(spend: Spend) -> int:
        who = f"user {args.user}" if args.user else "the organization"
        if args.action == "clear":
            removed = await spend.clear_extra_usage(args.org, args.user)
            state = "cleared: the config applies" if removed else "had no run-time setting"
            print(f"{args.org}: extra usage of {who} {state}")
        else:
            await spend.set_extra_usage(args.org, args.action == "enable", args.user)
            print(f"{args.org}: extra usage {args.action}d for {who}")
        return 0

    return _run(args, action)


def _request_json(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    d["asked"], d["decided"] = _when(r.asked_ms), _when(r.decided_ms)
    return d


def requests_list(args: Any) -> int:
    async def action(spend: Spend) -> int:
        pending = await LimitIncreases(spend).pending(args.org)
        if args.format == "json":
            _print_json([p.to_dict() for p in pending])
            return 0
        rows = [
            {
                "user": p.request.user,
                "seat": p.status.seat,
                "spend": format_usd(p.status.spend),
                "extra": format_usd(p.status.extra),
                "cap": cap_usd(p.status.cap),
                "asked": _when(p.request.asked_ms),
                "reason": p.request.reason,
            }
            for p in pending
        ]
        if not rows:
            print(f"{args.org}: no pending limit-increase request")
            return 0
        print_rows(rows, ("user", "seat", "spend", "extra", "cap", "asked", "reason"))
        return 0

    return _run(args, action)


def _decided(args: Any, r: Any) -> int:
    if args.format == "json":
        _print_json(_request_json(r))
    else:
        detail = ", ".join(f"{k} {v}" for k, v in r.decision.items() if k != "included")
        print(f"{args.org}: request of {r.user} {r.status}" + (f" ({detail})" if detail else ""))
    return 0


def requests_approve(args: Any) -> int:
    async def action(spend: Spend) -> int:
        increases = LimitIncreases(spend)
        if args.tier:
            r = await increases.approve(args.org, args.user, new_tier=args.tier, note=args.note)
        else:
            cap = cap_amount(args.cap)
            r = await increases.approve(args.org, args.user, new_cap=cap, note=args.note)
        return _decided(args, r)

    return _run(args, action)


def requests_deny(args: Any) -> int:
    async def action(spend: Spend) -> int:
        denied = await LimitIncreases(spend).deny(args.org, args.user, args.note)
        return _decided(args, denied)

    return _run(args, action)


def statement(args: Any) -> int:
    async def action(spend: Spend) -> int:
        st = await spend.statement(args.org, args.month)
        if args.format == "csv":
            sys.stdout.write(statement_csv(st))
        elif args.format == "json":
            _print_json(st.to_dict())
        else:
            state = "final" if st.final else f"in progress until {_when(st.period_end_ms)}"
            print(f"{st.org} {st.month} ({st.timezone}, {st.billing_mode}): {state}")
            rows = [
                {
                    "user": line.user or "(keys without a user)",
                    "seat": line.seat,
                    "requests": line.requests,
                    **_line_usd(
                        {"spend": line.spend, "included": line.included, "extra": line.extra}
                    ),
                }
                for line in st.lines
            ]
            rows.append(
                {
                    "user": "TOTAL",
                    "requests": st.requests,
                    **_line_usd({"spend": st.spend, "included": st.included, "extra": st.extra}),
                }
            )
            print_rows(rows, ("user", "seat", "requests", "spend", "included", "extra"))
            print(f"amount due: {format_usd(st.amount_due)} USD")
        if st.consistent is None:
            print(
                "tollway: note: the ledger no longer holds all of this month's events "
                "(store.ledger_retention_days): not cross-checked",
                file=sys.stderr,
            )
        for problem in st.discrepancies:
            print(f"tollway: warning: ledger and counters disagree: {problem}", file=sys.stderr)
        return 0

    return _run(args, action)
