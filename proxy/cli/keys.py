"""`tollway keys create | list | show | set | revoke | rotate`.

`create` and `set` take the same setting options, checked by the same code as the admin
API (`tollway.limits.keysettings`); `set` changes only the options given, and a word
clears one (``--rpm none``, ``--expires-in never``, ``--models all``, ``--tags ''``).

Durations (``--expires-in``, ``--overlap``) are ``<N>s|m|h|d|w`` (SPEC §7 DUR). Model
patterns (``--models 'gpt-4o*,claude-*'``) use ``*`` and ``?``; a key with a list may call
only the models it matches (403 otherwise).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tollway.config.overlay import with_users
from tollway.config.schema import Config
from tollway.limits.apikeys import (
    DEFAULT_OVERLAP_MS,
    LIMITS,
    ApiKeys,
    KeyRecord,
    KeySettings,
    iso,
)
from tollway.limits.clock import SystemClock
from tollway.limits.durations import parse_ms
from tollway.limits.errors import UnknownKey
from tollway.limits.keysettings import CLEAR_WORDS, SETTINGS, SettingError, record_fields
from tollway.limits.money import format_usd
from tollway.limits.store import Store
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


def _add_settings(p: Any, editing: bool) -> None:
    """The options of a key's settings, the same for `create` and `set`
    (`tollway.limits.keysettings`); `set` can clear one with a word (CLEAR_WORDS)."""

    def clear(setting: str) -> str:
        return f"; '{CLEAR_WORDS[setting]}' removes it" if editing else ""

    p.add_argument("--name", help="a label for the key, shown in lists and reports")
    p.add_argument(
        "--expires-in",
        metavar="DUR",
        help="the key stops working after this long from now, e.g. 30d" + clear("expires_in"),
    )
    p.add_argument(
        "--models",
        metavar="PATTERN,...",
        help="the only models the key may call, e.g. 'gpt-4o*,claude-*' (default: all)"
        + clear("models"),
    )
    p.add_argument(
        "--tags", metavar="TAG,...", help="labels for your own bookkeeping ('' removes them)"
    )
    for limit in LIMITS:
        flag = "--" + limit.replace("_", "-")
        p.add_argument(
            flag, dest=limit, metavar="N", help=f"the key's own {limit} (per minute)" + clear(limit)
        )
    p.add_argument(
        "--budget", metavar="USD", help="the key's spend budget per period" + clear("budget")
    )
    p.add_argument(
        "--budget-period",
        choices=PERIODS,
        help="calendar day, week (Monday first) or month of server.timezone (default month)",
    )
    p.add_argument(
        "--session-budget",
        metavar="USD",
        help="what one session id may spend with the key" + clear("session_budget"),
    )
    p.add_argument(
        "--max-in-flight",
        metavar="N",
        help="at most N of the key's requests out at once" + clear("max_in_flight"),
    )


def _given(args: Any) -> dict[str, Any]:
    """The settings given on the command line (a clearing word as None)."""
    given = {}
    for setting in SETTINGS:
        value = getattr(args, setting, None)
        if value is not None:
            given[setting] = None if value == CLEAR_WORDS.get(setting) else value
    return given


def _fields(args: Any, now_ms: int) -> dict[str, str]:
    """The key record's fields for the options given; ValueError naming the option."""
    try:
        return record_fields(_given(args), now_ms)
    except SettingError as e:
        raise ValueError(f"--{e.setting.replace('_', '-')}: {e.problem}") from None


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list, rotate and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    p = ksub.add_parser("create", help="create a key; the secret is printed once")
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--workspace", help="workspace of the organization")
    p.add_argument("--user", help="user of the organization")
    _add_settings(p, editing=False)
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

    p = ksub.add_parser(
        "set", help="change a key's settings (only those given), on every proxy within 1 s"
    )
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_..., as listed)")
    _add_settings(p, editing=True)
    _add_common(p)
    p.set_defaults(func=set_)

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
    parts = [f"{k}={v}" for k, v in d["limits"].items() if v is not None]
    if r.limits is not None and r.limits.budget is not None:
        parts.append(f"budget={format_usd(r.limits.budget)}/{r.limits.budget_period}")
    if r.limits is not None and r.limits.session_budget is not None:
        parts.append(f"session_budget={format_usd(r.limits.session_budget)}")
    if r.limits is not None and r.limits.max_in_flight is not None:
        parts.append(f"max_in_flight={r.limits.max_in_flight}")
    limits = ",".join(parts)
    return {**d, "models": ",".join(r.models) or "*", "tags": ",".join(r.tags), "limits": limits}


def _print_secret(record: KeyRecord, secret: str, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({**key_dict(record), "key": secret}))
    else:
        print(f"key id:  {record.key_id}")
        print(f"key:     {secret}")
        print("Store the key now: it is not shown again.", file=sys.stderr)


def create(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
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
            settings = KeySettings.from_fields(_fields(args, now))
        except ValueError as e:
            return _fail(str(e), EXIT_USAGE)
        record, secret = await ApiKeys(store).create(
            args.org, now, args.workspace, args.user, settings=settings
        )
        _print_secret(record, secret, args.format)
        return 0

    return with_store(args, go)


def list_(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
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
    async def go(cfg: Config, store: Store) -> int:
        try:
            record = await ApiKeys(store).get(args.key_id)
        except UnknownKey:
            return _fail(f"no key {args.key_id!r}", EXIT_REFUSED)
        _show(record, args.format)
        return 0

    return with_store(args, go)


def _show(record: KeyRecord, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(key_dict(record)))
    else:
        for name, value in _row(record).items():
            print(f"{name + ':':<22}{'' if value is None else value}")


def set_(args: Any) -> int:
    if not _given(args):
        return _fail("give at least one setting to change (see keys set --help)", EXIT_USAGE)
    try:
        fields = _fields(args, SystemClock().now_ms())
    except ValueError as e:
        return _fail(str(e), EXIT_USAGE)

    async def go(cfg: Config, store: Store) -> int:
        try:
            record = await ApiKeys(store).update(args.key_id, fields)
        except UnknownKey as e:
            message = str(e) if "revoked" in str(e) else f"no key {args.key_id!r}"
            return _fail(message, EXIT_REFUSED)
        _show(record, args.format)
        return 0

    return with_store(args, go)


def revoke(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
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

    async def go(cfg: Config, store: Store) -> int:
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
