"""`tollway users add | set | remove | list`: an organization's users and seats at run
time, with no YAML edit (precedence in `tollway.config.overlay`: the YAML declares,
run-time settings override, ``default`` falls back to the YAML).

Exit codes as in `tollway.proxy.cli.common`: 1 refused (the user exists, or is unknown),
2 usage errors (unknown organization, tier or workspace; a bad limit or amount).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from tollway.config.overlay import with_users
from tollway.config.schema import Config, Organization
from tollway.limits.apikeys import ApiKeys
from tollway.limits.capplans import ADJECTIVE
from tollway.limits.clock import SystemClock
from tollway.limits.money import parse_usd
from tollway.limits.seats import UNLIMITED
from tollway.limits.spend import Spend
from tollway.limits.store import Store
from tollway.limits.users import CLEAR, LIMIT_NAMES, RuntimeUsers, UserError, describe
from tollway.proxy.cli.common import EXIT_REFUSED, EXIT_USAGE, with_store
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.cli.output import print_rows

# `users set` flags of the user's own caps → their period
CAP_PERIODS = {"monthly_cap": "month", "daily_cap": "day", "weekly_cap": "week"}
COLUMNS = ("user", "seat", "workspace", "rpm", "tpm", "monthly_cap", "source")


def _common(p: Any, user: bool = True) -> None:
    p.add_argument("--org", required=True, help="organization (from the config)")
    if user:
        p.add_argument("user", metavar="USER", help="the user's name")
    p.add_argument("--format", choices=("table", "json"), default="table", help="table or json")
    p.add_argument("--config", help="config file (default: $TOLLWAY_CONFIG, ./tollway.yaml)")


def register(sub: Any) -> None:
    users = sub.add_parser(
        "users",
        help="add, change, remove and list users and seats at run time",
        description="Users and seats without editing the YAML. The YAML declares; run-time "
        "settings override it; 'default' drops a run-time setting (the YAML applies again).",
    )
    usub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    p = usub.add_parser("add", help="add a user (metered and capped from its next request)")
    p.add_argument("--seat", metavar="TIER", help="a seat tier of the organization")
    p.add_argument("--workspace", metavar="W", help="a workspace of the organization")
    _common(p)
    p.set_defaults(func=add)

    p = usub.add_parser("set", help="change a user's seat, workspace, limits or caps")
    p.add_argument("--seat", metavar="TIER", help="a seat tier, or 'default'")
    p.add_argument("--workspace", metavar="W", help="a workspace, or 'default'")
    for name in LIMIT_NAMES:
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, dest=name, metavar="N", help=f"{name} per minute, or 'default'")
    for field, period in CAP_PERIODS.items():
        p.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            metavar="USD",
            help=f"the user's own {ADJECTIVE[period]} cap on extra usage: USD, 'unlimited', "
            "or 'default'",
        )
    _common(p)
    p.set_defaults(func=set_)

    p = usub.add_parser("remove", help="remove a user added at run time and revoke its keys")
    _common(p)
    p.set_defaults(func=remove)

    p = usub.add_parser("list", help="every user (YAML and run time) with what applies")
    _common(p, user=False)
    p.set_defaults(func=list_)


def _cap(text: str, field: str = "monthly_cap") -> int | str:
    if text in (UNLIMITED, CLEAR):
        return text
    try:
        return parse_usd(text)
    except ValueError as e:
        raise UserError(f"--{field.replace('_', '-')}: {e}") from None


async def _rows(
    cfg: Config, store: Store, org: str, only: str | None = None
) -> list[dict[str, Any]]:
    entries = await RuntimeUsers(store).entries(org, fresh=True)
    live = with_users(cfg, {org: entries})
    caps = (await Spend(store, SystemClock(), lambda: live).caps(org))["users"]
    declared = cfg.organizations[org].users
    out = []
    for user in sorted(live.organizations[org].users):
        if only is not None and user != only:
            continue
        d = describe(live.organizations[org], user in declared, user, entries.get(user))
        c = caps[user]
        out.append(
            {
                **d,
                "monthly_cap": c["cap"],
                "cap_source": c["source"],
                "daily_cap": c["daily"]["cap"],
                "weekly_cap": c["weekly"]["cap"],
            }
        )
    return out


def _show(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return
    table = []
    for r in rows:
        cap = r["monthly_cap"]
        cap_text = "unlimited" if cap is None else f"{cap / 1_000_000:.2f}"
        table.append({**r, **r["limits"], "monthly_cap": f"{cap_text} ({r['cap_source']})"})
    print_rows(table, COLUMNS)


def _run(
    args: Any, action: Callable[[Config, Store, Organization], Coroutine[Any, Any, int]]
) -> int:
    async def go(cfg: Config, store: Store) -> int:
        org_cfg = cfg.organizations.get(args.org)
        if org_cfg is None:
            known = ", ".join(sorted(cfg.organizations)) or "none"
            return _fail(f"unknown organization {args.org!r} (known: {known})", EXIT_USAGE)
        try:
            return await action(cfg, store, org_cfg)
        except UserError as e:
            refused = "already exists" in str(e) or "unknown user" in str(e)
            return _fail(str(e), EXIT_REFUSED if refused else EXIT_USAGE)

    return with_store(args, go)


def add(args: Any) -> int:
    async def action(cfg: Config, store: Store, org_cfg: Organization) -> int:
        await RuntimeUsers(store).add(org_cfg, args.org, args.user, args.seat, args.workspace)
        _show(await _rows(cfg, store, args.org, args.user), args.format)
        return 0

    return _run(args, action)


def set_(args: Any) -> int:
    async def action(cfg: Config, store: Store, org_cfg: Organization) -> int:
        caps = {
            period: _cap(getattr(args, field), field)
            for field, period in CAP_PERIODS.items()
            if getattr(args, field) is not None
        }
        limits = {n: getattr(args, n) for n in LIMIT_NAMES if getattr(args, n) is not None}
        users = RuntimeUsers(store)
        await users.set(org_cfg, args.org, args.user, args.seat, args.workspace, limits)
        if caps:
            live = with_users(cfg, {args.org: await users.entries(args.org)})
            spend = Spend(store, SystemClock(), lambda: live)
            for period, cap in caps.items():
                if cap == CLEAR:
                    await spend.clear_cap(args.org, "user", args.user, period)
                else:
                    await spend.set_cap(args.org, "user", args.user, cap, period)
        _show(await _rows(cfg, store, args.org, args.user), args.format)
        return 0

    return _run(args, action)


def remove(args: Any) -> int:
    async def action(cfg: Config, store: Store, org_cfg: Organization) -> int:
        gone = await RuntimeUsers(store).remove(org_cfg, args.org, args.user)
        revoked = await ApiKeys(store).revoke_user(args.org, args.user) if gone else []
        if args.format == "json":
            print(json.dumps({"user": args.user, "removed": gone, "revoked_keys": revoked}))
        elif gone:
            print(f"removed {args.user} from {args.org}; revoked {len(revoked)} key(s)")
        else:
            print(
                f"dropped the run-time settings of {args.user}; the YAML still declares it",
                file=sys.stderr,
            )
        return 0

    return _run(args, action)


def list_(args: Any) -> int:
    async def action(cfg: Config, store: Store, org_cfg: Organization) -> int:
        rows = await _rows(cfg, store, args.org)
        if args.format == "json":
            print(json.dumps(rows))
        else:
            _show(rows, "table") if rows else print("no users")
        return 0

    return _run(args, action)
