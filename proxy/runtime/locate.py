"""What every command of one setup shares: where the config is and which store to use.

``--config`` defaults to ``$TOLLWAY_CONFIG``, then ``./tollway.yaml``. The store is
``$REDIS_URL`` when set, else ``store.redis_url`` from the config, else the embedded Valkey
of the data directory (``$TOLLWAY_DATA``, default ``.tollway/`` beside the config).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tollway.config.schema import Config
from tollway.limits.embedded import EmbeddedValkey, data_dir_for
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store


def version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" when Tollway
    runs from a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tollway")
    except PackageNotFoundError:
        return "unknown"


def config_path(given: str | None) -> Path:
    return Path(given or os.environ.get("TOLLWAY_CONFIG") or "tollway.yaml")


@dataclass
class StoreHandle:
    url: str
    embedded: EmbeddedValkey | None

    def open(self, cfg: Config) -> Store:
        return Store.from_url(self.url, Keys(cfg.store.key_prefix), cfg.store.timeout_seconds)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def ledger_url(cfg: Config) -> str | None:
    """The ledger database: ``$TOLLWAY_LEDGER_URL`` when set (a PostgreSQL URL may hold a
    password, which belongs in a secret), else ``ledger.url``; None: SQLite in the data
    directory."""
    return os.environ.get("TOLLWAY_LEDGER_URL") or cfg.ledger.url


def store_url(cfg: Config, path: Path) -> StoreHandle:
    """The store URL of this setup, starting the embedded Valkey when it is the store."""
    url = os.environ.get("REDIS_URL") or cfg.store.redis_url
    if url:
        return StoreHandle(url, None)
    embedded = EmbeddedValkey(data_dir_for(path))
    return StoreHandle(embedded.start(), embedded)
