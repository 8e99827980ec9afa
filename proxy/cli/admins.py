"""`tollway admins create | list | revoke`: the credentials of an organization's owners,
admins and billing people (`tollway.limits.admins`), for the admin API and the console."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from tollway.config.schema import Config
from tollway.limits.admins import ROLES, Credential, Credentials
from tollway.limits.clock import SystemClock
from tollway.limits.errors import UnknownCredential
from tollway.limits.store import Store
from tollway.proxy.cli.common import EXIT_REFUSED, EXIT_USAGE, with_store
from tollway.proxy.cli.output import print_rows

FORMAT_HELP = "table for people (default) or json"


def _common(p: Any) -> None:
    p.add_argument("--config", help="config file (default: $TOLLWAY_CONFIG, ./tollway.yaml)")
    p.add_argument("--format", choices=("table", "json"), default="table", help=FORMAT_HELP)


def register(sub: Any) -> None:
    admins = sub.add_parser("admins", help="create, list and revoke organization credentials")
    asub = admins.add_subparsers(dest="admins_command", required=True, metavar="ACTION")

    p = asub.add_parser("create", help="create a credential; the secret is printed once")
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--role", required=True, choices=ROLES, help="what it may do")
    p.add_argument("--name", default="", help="who holds it (a label)")
    _common(p)
    p.set_defaults(func=create)

    p = asub.add_parser("list", help="list an organization's credentials (never the secrets)")
    p.add_argument("--org", required=True, help="organization (from the config)")
    _common(p)
    p.set_defaults(func=list_)

    p = asub.add_parser("revoke", help="revoke a credential at once (its sessions end)")
    p.add_argument("cred_id", metavar="ID", help="the credential's id (adm_..., as listed)")
    _common(p)
    p.set_defaults(func=revoke)


def _row(c: Credential) -> dict[str, Any]:
    created = datetime.fromtimestamp(c.created_ms / 1000, UTC).isoformat()
    return {**c.to_dict(), "created": created}


def create(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
        if args.org not in cfg.organizations:
            print(f"tollway: unknown organization {args.org!r}", file=sys.stderr)
            return EXIT_USAGE
        record, secret = await Credentials(store).create(
            args.org, args.role, SystemClock().now_ms(), args.name
        )
        if args.format == "json":
            print(json.dumps({**_row(record), "credential": secret}))
        else:
            print(f"id:          {record.cred_id}")
            print(f"role:        {record.role} of {record.org}")
            print(f"credential:  {secret}")
            print("Store the credential now: it is not shown again.", file=sys.stderr)
        return 0

    return with_store(args, go)


def list_(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
        rows = [_row(c) for c in await Credentials(store).list(args.org)]
        if args.format == "json":
            print(json.dumps(rows))
        else:
            print_rows(rows, ("id", "role", "name", "hint", "created", "revoked"))
        return 0

    return with_store(args, go)


def revoke(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
        try:
            record = await Credentials(store).revoke(args.cred_id)
        except UnknownCredential:
            print(f"tollway: no credential {args.cred_id!r}", file=sys.stderr)
            return EXIT_REFUSED
        if args.format == "json":
            print(json.dumps(_row(record)))
        else:
            print(f"revoked {record.cred_id} ({record.role} of {record.org})")
        return 0

    return with_store(args, go)
