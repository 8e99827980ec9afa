"""`tollway keys create | list | show | revoke | rotate`.

Durations (``--expires-in``, ``--overlap``) are ``<N>s|m|h|d|w`` (SPEC §7 DUR). Model
patterns (``--models 'gpt-4o*,claude-*'``) use ``*`` and ``?``; a key with a list may call
only the models it matches (403 otherwise).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tollway.config.overlay import with_users
from tollway.limits.apikeys import (
    DEFAULT_OVERLAP_MS,
    LIMITS,
    ApiKeys,
    KeyRecord,
    KeySettings,
    iso,
    parse_limit,
    parse_list,
)
from tollway.limits.clock import SystemClock
from tollway.limits.durations import parse_ms
from tollway.limits.errors import UnknownKey
from tollway.limits.money import parse_usd
from tollway.limits.plans import KeyLimits
from tollway.limits.seats import MAX_AMOUNT
from tollway.limits.users import RuntimeUsers
from tollway.limits.windows import PERIODS
from tollway.proxy.cli.common import EXIT_REFUSED, EXIT_USAGE, with_store
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.cli.output import print_rows

FORMAT_HELP = "table for people (default) or json"
LIST_COLUMNS = (
    "id",
    "name",
    "status",
    "workspace",
    "user",
    "hint",
    "expires",
    "models",
    "limits",
    "tags",
)


def _add_common(p: Any) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table", help=FORMAT_HELP)
    p.add_argument("--config", help="config file (default: $TOLLWAY_CONFIG, ./tollway.yaml)")


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list, rotate and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    p = ksub.add_parser("create", help="create a key; the secret is printed once")
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--workspace", help="workspace of the organization")
    p.add_argument("--user", help="user of the organization")
    p.add_argument("--name", default="", help="a label for the key, shown in lists and reports")
    p.add_argument("--expires-in", metavar="DUR", help="the key stops working after, e.g. 30d")
    p.add_argument(
        "--models",
        metavar="PATTERN,...",
        help="the only models the key may call, e.g. 'gpt-4o*,claude-*' (default: all)",
    )
    p.add_argument("--tags", metavar="TAG,...", help="labels for your own bookkeeping")
    for limit in LIMITS:
        flag = "--" + limit.replace("_", "-")
        p.add_argument(flag, dest=limit, metavar="N", help=f"the key's own {limit} (per minute)")
    p.add_argument("--budget", metavar="USD", help="the key's spend budget per period")
    p.add_argument(
        "--budget-period",
        choices=PERIODS,
        default="month",
        help="calendar day, week (Monday first) or month of server.timezone (default month)",
    )
    p.add_argument(
        "--session-budget", metavar="USD", help="what one session id may spend with the key"
    )
    _add_common(p)
    p.set_defaults(func=create)

    p = ksub.add_parser("list", help="list an organization's keys (never their secrets)")
    p.add_argument("--org", required=True, help="organization (from the config)")
    _add_common(p)
    p.set_defaults(func=list_)

    p = ksub.add_parser("show", help="show one key (never its secret)")
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_..., as listed)")
    _add_common(p)
    p.set_defaults(func=show)

    p = ksub.add_parser("revoke", help="revoke a key, on every proxy, at once")
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_..., as listed)")
    _add_common(p)
    p.set_defaults(func=revoke)

    p = ksub.add_parser(
        "rotate",
        help="give a key a new secret (printed once); the old one works until the overlap ends",
    )
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_..., as listed)")
    p.add_argument(
        "--overlap",
        metavar="DUR",
        default=None,
        help="how long the old secret keeps working, e.g. 1h; 0s: stop it now "
        f"(default: {DEFAULT_OVERLAP_MS // 3_600_000}h)",
    )
    _add_common(p)
    p.set_defaults(func=rotate)


def key_dict(r: KeyRecord) -> dict[str, Any]:
    """A key record as JSON (never its secret), as of now."""
    return r.to_dict(SystemClock().now_ms())


def _row(r: KeyRecord) -> dict[str, Any]:
    d = key_dict(r)
    limits = ",".join(f"{k}={v}" for k, v in d["limits"].items() if v is not None)
    return {**d, "models": ",".join(r.models) or "*", "tags": ",".join(r.tags), "limits": limits}


def _settings(args: Any, now_ms: int) -> KeySettings:
    """The key's settings from the options; ValueError naming the bad option."""
    try:
        expires = now_ms + parse_ms(args.expires_in) if args.expires_in else None
    except ValueError as e:
        raise ValueError(f"--expires-in: {e}") from None
    try:
        models = parse_list(args.models, "--models")
        tags = parse_list(args.tags, "--tags")
    except ValueError as e:
        raise ValueError(str(e)) from None
    if args.models is not None and not models:
        raise ValueError("--models: give at least one pattern (omit it to allow every model)")
    found: dict[str, Any] = {
        n: parse_limit(n, getattr(args, n)) for n in LIMITS if getattr(args, n) is not None
    }
    if args.budget is not None:
        try:
            found["budget"] = parse_usd(args.budget)
            if found["budget"] > MAX_AMOUNT:
                raise ValueError(f"at most {MAX_AMOUNT // 1_000_000} USD")
        except ValueError as e:
            raise ValueError(f"--budget: {e}") from None
        found["budget_period"] = args.budget_period
    if args.session_budget is not None:
        try:
            found["session_budget"] = parse_usd(args.session_budget)
        except ValueError as e:
            raise ValueError(f"--session-budget: {e}") from None
    limits = KeyLimits(**found) if found else None
    return KeySettings(args.name, expires, models, tags, limits)


def _print_secret(record: KeyRecord, secret: str, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({**key_dict(record), "key": secret}))
    else:
        print(f"key id:  {record.key_id}")
        print(f"key:     {secret}")
        print("Store the key now: it is not shown again.", file=sys.stderr)


def create(args: Any) -> int:
    async def go(cfg: Any, store: Any) -> int:
        if args.org not in cfg.organizations:
            return _fail(f"unknown organization {args.org!r}", EXIT_USAGE)
        entries = await RuntimeUsers(store).entries(args.org)
        org = with_users(cfg, {args.org: entries}).organizations[args.org]
        if args.workspace and args.workspace not in org.workspaces:
            return _fail(f"unknown workspace {args.workspace!r} in {args.org}", EXIT_USAGE)
        if refusal := org.no_keys_for(args.workspace):
            return _fail(refusal, EXIT_USAGE)
        if args.user and args.user not in org.users:
            return _fail(f"unknown user {args.user!r} in {args.org}", EXIT_USAGE)
        now = SystemClock().now_ms()
        try:
            settings = _settings(args, now)
        except ValueError as e:
            return _fail(str(e), EXIT_USAGE)
        record, secret = await ApiKeys(store).create(
            args.org, now, args.workspace, args.user, settings=settings
        )
        _print_secret(record, secret, args.format)
        return 0

    return with_store(args, go)


def list_(args: Any) -> int:
    async def go(cfg: Any, store: Any) -> int:
        if args.org not in cfg.organizations:
            known = ", ".join(sorted(cfg.organizations)) or "none"
            return _fail(f"unknown organization {args.org!r} (known: {known})", EXIT_USAGE)
        records = await ApiKeys(store).list(args.org)
        if args.format == "json":
            print(json.dumps([key_dict(r) for r in records]))
            return 0
        print_rows([_row(r) for r in records], LIST_COLUMNS)
        return 0

    return with_store(args, go)


def show(args: Any) -> int:
    async def go(cfg: Any, store: Any) -> int:
        try:
            record = await ApiKeys(store).get(args.key_id)
        except UnknownKey:
            return _fail(f"no key {args.key_id!r}", EXIT_REFUSED)
        if args.format == "json":
            print(json.dumps(key_dict(record)))
        else:
            for name, value in _row(record).items():
                print(f"{name + ':':<22}{'' if value is None else value}")
        return 0

    return with_store(args, go)


def revoke(args: Any) -> int:
    async def go(cfg: Any, store: Any) -> int:
        try:
            record = await ApiKeys(store).revoke(args.key_id)
        except UnknownKey:
            return _fail(f"no key {args.key_id!r}", EXIT_REFUSED)
        if args.format == "json":
            print(json.dumps(key_dict(record)))
        else:
            print(f"revoked {record.key_id} ({record.org})")
        return 0

    return with_store(args, go)


def rotate(args: Any) -> int:
    try:
        overlap = DEFAULT_OVERLAP_MS if args.overlap is None else parse_ms(args.overlap, zero=True)
    except ValueError as e:
        return _fail(f"--overlap: {e}", EXIT_USAGE)

    async def go(cfg: Any, store: Any) -> int:
        try:
            record, secret = await ApiKeys(store).rotate(
                args.key_id, SystemClock().now_ms(), overlap
            )
        except UnknownKey as e:
            return _fail(str(e), EXIT_REFUSED)
        _print_secret(record, secret, args.format)
        if args.format != "json":
            until = key_dict(record)["old_secret_until_ms"]
            note = f"until {iso(until)}" if until is not None else "no more: it is refused now"
            print(f"The old secret works {note}.", file=sys.stderr)
        return 0

    return with_store(args, go)
