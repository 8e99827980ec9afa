"""Tollway's configuration: YAML -> validated, immutable, typed ``Config``.

    from tollway.config import Config, ConfigError, load_config, parse_config_text

See ``tollway.config.schema`` for the models and units, ``tollway.config.loader`` for how
files are read and errors reported, and ``tollway.config.reload`` for hot reload.

Names are imported lazily (PEP 562) so that ``python -m tollway.config.schema``, which regenerates
``config/tollway.schema.json``, runs without importing its own module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tollway.config.loader import ConfigError, load_config, parse_config_text
    from tollway.config.schema import (
        AutoReload,
        Billing,
        Config,
        ExtraUsage,
        Limits,
        MeteringConfig,
        Organization,
        Payment,
        Price,
        SeatTier,
        ServerConfig,
        SpendCaps,
        StoreConfig,
        Upstream,
        User,
        Workspace,
        json_schema,
    )

_FROM_LOADER = {"ConfigError", "load_config", "parse_config_text"}

__all__ = [
    "AutoReload",
    "Billing",
    "Config",
    "ConfigError",
    "ExtraUsage",
    "Limits",
    "MeteringConfig",
    "Organization",
    "Payment",
    "Price",
    "SeatTier",
    "ServerConfig",
    "SpendCaps",
    "StoreConfig",
    "Upstream",
    "User",
    "Workspace",
    "json_schema",
    "load_config",
    "parse_config_text",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'config' has no attribute {name!r}")
    module = importlib.import_module(
        "tollway.config.loader" if name in _FROM_LOADER else "tollway.config.schema"
    )
    return getattr(module, name)
