"""What every `tollway` subcommand shares: the exit codes, loading this setup's config,
and running a coroutine against its store. Subcommand modules import this at top level;
`main.py` imports the subcommands (never the other way round).

Exit codes: 0 success; 1 the operation was refused (unknown key, bad amount...); 2 usage
or config errors; 3 the store is unavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tollway.config import ConfigError, load_config
from tollway.config.schema import Config
from tollway.limits.embedded import data_dir_for
from tollway.limits.errors import LimitsError, SpendError, StoreUnavailable
from tollway.limits.history import History
from tollway.limits.ledgerdb import open_ledger
from tollway.limits.money import format_usd, parse_usd
from tollway.limits.seats import UNLIMITED
from tollway.limits.store import Store
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.runtime.locate import config_path, ledger_url, store_url

EXIT_REFUSED, EXIT_USAGE, EXIT_STORE = 1, 2, 3


def load_setup(path_arg: str | None, *, secrets: bool = False) -> tuple[Path, Config]:
    """The config of this setup. Only `serve` needs the upstream keys' variables set."""
    path = config_path(path_arg)
    if not path.exists():
        from tollway.proxy.runtime.serve import default_config_hint

        raise SystemExit(_fail(default_config_hint(path), EXIT_USAGE))
    try:
        return path, load_config(path, secrets=secrets)
    except ConfigError as e:
        raise SystemExit(_fail(str(e), EXIT_USAGE)) from None


def with_store(args: Any, fn: Callable[[Config, Store], Coroutine[Any, Any, int]]) -> int:
    """Run `fn(cfg, store)` against this setup's store; map store errors to exit codes."""
    path, cfg = load_setup(args.config)
    handle = store_url(cfg, path)

    async def go() -> int:
        store = handle.open(cfg)
        store.history = History(store, open_ledger(ledger_url(cfg), data_dir_for(path)))
        try:
            return await fn(cfg, store)
        finally:
            await store.history.close()
            await store.close()

    try:
        return asyncio.run(go())
    except StoreUnavailable as e:
        return _fail(f"store unavailable: {e}", EXIT_STORE)
    except LimitsError as e:
        return _fail(str(e), EXIT_REFUSED)
    finally:
        handle.stop()


def cap_usd(micro: int | None) -> str:
    """A cap as the CLI shows it: USD, or "unlimited" where there is none."""
    return UNLIMITED if micro is None else format_usd(micro)


def cap_amount(text: str) -> int | str:
    """A cap given on the command line: exact micro-USD, or "unlimited"."""
    if text.strip().lower() == UNLIMITED:
        return UNLIMITED
    try:
        return parse_usd(text)
    except ValueError as e:
        raise SpendError(f"invalid amount {text!r}: {e}") from None
