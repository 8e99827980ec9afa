"""`tollway keys create | list | revoke`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from tollway.limits.apikeys import ApiKeys, KeyRecord
from tollway.limits.clock import SystemClock
from tollway.limits.errors import UnknownKey
from tollway.proxy.cli.output import print_rows

FORMAT_HELP = "table for people (default) or json"


def _add_common(p: Any) -> None:
    p.add_argument("--config", help="config file (default: $TOLLWAY_CONFIG, ./tollway.yaml)")


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    p = ksub.add_parser("create", help="create a key; the secret is printed once")
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--workspace", help="workspace of the organization")
    p.add_argument("--user", help="user of the organization")
    p.add_argument("--name", default="", help="a label for the key")
    p.add_argument("--format", choices=("table", "json"), default="table", help=FORMAT_HELP)
    _add_common(p)
    p.set_defaults(func=create)

    p = ksub.add_parser("list", help="list an organization's keys (never their secrets)")
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--format", choices=("table", "json"), default="table", help=FORMAT_HELP)
    _add_common(p)
    p.set_defaults(func=list_)

    p = ksub.add_parser("revoke", help="revoke a key, on every proxy, at once")
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_..., as listed)")
    p.add_argument("--format", choices=("table", "json"), default="table", help=FORMAT_HELP)
    _add_common(p)
    p.set_defaults(func=revoke)


def key_dict(r: KeyRecord) -> dict[str, Any]:
    """A key record as JSON (never its secret): the CLI's and the admin API's shape."""
    return {
        "id": r.key_id,
        "org": r.org,
        "workspace": r.workspace,
        "user": r.user,
        "name": r.name,
        "hint": r.hint,
        "created_ms": r.created_ms,
        "created": datetime.fromtimestamp(r.created_ms / 1000, UTC).isoformat(),
        "revoked": r.revoked,
    }


def create(args: Any) -> int:
    from tollway.proxy.cli.main import EXIT_USAGE, with_store

    async def go(cfg: Any, store: Any) -> int:
        org = cfg.organizations.get(args.org)
        if org is None:
            print(f"tollway: unknown organization {args.org!r}", file=sys.stderr)
            return EXIT_USAGE
        if args.workspace and args.workspace not in org.workspaces:
            print(f"tollway: unknown workspace {args.workspace!r} in {args.org}", file=sys.stderr)
            return EXIT_USAGE
        if args.user and args.user not in org.users:
            print(f"tollway: unknown user {args.user!r} in {args.org}", file=sys.stderr)
            return EXIT_USAGE
        record, secret = await ApiKeys(store).create(
            args.org, SystemClock().now_ms(), args.workspace, args.user, args.name
        )
        if args.format == "json":
            print(json.dumps({**key_dict(record), "key": secret}))
        else:
            print(f"key id:  {record.key_id}")
            print(f"key:     {secret}")
            print("Store the key now: it is not shown again.", file=sys.stderr)
        return 0

    return with_store(args, go)


def list_(args: Any) -> int:
    from tollway.proxy.cli.main import EXIT_USAGE, with_store

    async def go(cfg: Any, store: Any) -> int:
        if args.org not in cfg.organizations:
            known = ", ".join(sorted(cfg.organizations)) or "none"
            print(f"tollway: unknown organization {args.org!r} (known: {known})", file=sys.stderr)
            return EXIT_USAGE
        records = [key_dict(r) for r in await ApiKeys(store).list(args.org)]
        if args.format == "json":
            print(json.dumps(records))
            return 0
        print_rows(records, ("id", "name", "workspace", "user", "hint", "created", "revoked"))
        return 0

    return with_store(args, go)


def revoke(args: Any) -> int:
    from tollway.proxy.cli.main import EXIT_REFUSED, with_store

    async def go(cfg: Any, store: Any) -> int:
        try:
            record = await ApiKeys(store).revoke(args.key_id)
        except UnknownKey:
            print(f"tollway: no key {args.key_id!r}", file=sys.stderr)
            return EXIT_REFUSED
        if args.format == "json":
            print(json.dumps(key_dict(record)))
        else:
            print(f"revoked {record.key_id} ({record.org})")
        return 0

    return with_store(args, go)
