"""The `tollway` command line.

Exit codes (`tollway.proxy.cli.common`): 0 success; 1 the operation was refused (unknown
key, bad amount...); 2 usage or config errors; 3 the store is unavailable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tollway.config import ConfigError, load_config
from tollway.config.reload import ConfigHolder
from tollway.proxy.cli import admins as cli_admins
from tollway.proxy.cli import caps as cli_caps
from tollway.proxy.cli import credits as cli_credits
from tollway.proxy.cli import developers as cli_developers
from tollway.proxy.cli import keys as cli_keys
from tollway.proxy.cli import ledger as cli_ledger
from tollway.proxy.cli import reports as cli_ops
from tollway.proxy.cli import spend as cli_spend
from tollway.proxy.cli import users as cli_users
from tollway.proxy.cli.common import EXIT_USAGE, load_setup
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.runtime import logs
from tollway.proxy.runtime.locate import store_url, version


def cmd_serve(args: Any) -> int:
    from tollway.proxy.runtime.serve import run

    path, cfg = load_setup(args.config, secrets=True)
    logs.setup(args.log_level)
    holder = ConfigHolder(cfg)
    host = args.host or cfg.server.host
    port = args.port or cfg.server.port
    metrics = (
        args.metrics_host or cfg.server.metrics_host,
        cfg.server.metrics_port if args.metrics_port is None else args.metrics_port,
    )
    if args.workers and args.workers > 1:
        from tollway.proxy.runtime.workers import run_workers

        return run_workers(holder, path, host, port, args.workers, args.drain_timeout, metrics)
    run(holder, store_url(cfg, path), host, port, args.drain_timeout, metrics)
    return 0


def cmd_check_config(args: Any) -> int:
    # Like every command but `serve`, checking needs no upstream key: a missing variable
    # is not an error here (serve still refuses to start without it).
    try:
        load_config(args.file, secrets=False)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        return _fail(f"cannot read {args.file}: {e.strerror}", EXIT_USAGE)
    print(f"{args.file}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollway", description="Tollway, a metering proxy for LLM APIs."
    )
    parser.add_argument("--version", action="version", version=f"tollway {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the proxy")
    p.add_argument("--config", help="config file (default: $TOLLWAY_CONFIG, ./tollway.yaml)")
    p.add_argument("--host", help="address to listen on (default: server.host)")
    p.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    p.add_argument(
        "--metrics-host",
        help="address of the operators' /metrics listener (default: server.metrics_host)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="port of the operators' /metrics listener (default: server.metrics_port; 0: off)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds to finish in-flight requests and streams (default: 30)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file without starting anything")
    p.add_argument("file", help="the YAML config file to check")
    p.set_defaults(func=cmd_check_config)

    cli_keys.register(sub)
    cli_admins.register(sub)
    cli_credits.register(sub)
    cli_ops.register(sub)
    cli_developers.register(sub)
    cli_spend.register(sub)
    cli_caps.register(sub)
    cli_users.register(sub)
    cli_ledger.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
