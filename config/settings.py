"""The process settings of a Tollway config: the store, the ledger database, the server,
the upstreams, metering bounds and notifications (pydantic v2 models, frozen, unknown keys
refused). `tollway.config.schema.Config` assembles them with the organizations and prices;
the units are those of its docstring."""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)
from tollway.config.values import (
    EnvName,
    FrozenModel,
    HttpUrl,
    Money,
    Name,
    PositiveInt,
    Seconds,
    StrictBool,
    integer,
    resolve_secret,
)

_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")


class StoreConfig(FrozenModel):
    redis_url: str | None = None
    """Redis/Valkey URL; null: the caller decides ($REDIS_URL, else the embedded Valkey)."""
    on_unavailable: Literal["closed", "open"] = "closed"
    """What happens to requests while the store is unreachable: refuse (closed) or serve."""
    key_prefix: Name = "tw"
    timeout_seconds: Seconds = 0.5
    hold_ttl_seconds: PositiveInt = 900
    """Lifetime of a reservation a dead proxy never settled."""
    settled_ttl_seconds: PositiveInt = 3600
    """How long Redis remembers a settled request id (~200 bytes each), so that a repeated
    settlement never charges twice. A journal replay that comes later is checked against
    the ledger database (every settlement's event), so this only has to outlast a retry."""
    ledger_retention_days: Annotated[int, Field(strict=True, ge=62)] = 62
    """Unused since the ledger moved to the ledger database (which keeps every event);
    accepted so that existing configs still load."""
    journal_max_bytes: PositiveInt = 67108864
    """Size bound of the local journal of settlements made while the store was
    unavailable (data directory, journal/); entries beyond it are dropped and counted."""

    @field_validator("redis_url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in _REDIS_SCHEMES:
            raise ValueError(f"URL scheme must be one of: {', '.join(_REDIS_SCHEMES)}")
        return value


_LEDGER_SCHEMES = ("sqlite", "postgresql", "postgres")


class LedgerConfig(FrozenModel):
    url: str | None = None
    """Ledger database: null for a SQLite file in the data directory (beside the embedded
    Valkey), ``sqlite:///path`` or ``postgresql://user@host:port/db``."""
    ship_interval_seconds: Seconds = 1.0
    """How often the shipper moves new ledger events from Redis to the database."""
    ship_batch: PositiveInt = 500
    """Events per database transaction."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in _LEDGER_SCHEMES:
            raise ValueError(f"URL scheme must be one of: {', '.join(_LEDGER_SCHEMES)}")
        return value


class ServerConfig(FrozenModel):
    host: str = "127.0.0.1"
    port: Annotated[int, integer(1, 65535), Field(ge=1, le=65535)] = 8080
    max_body_bytes: PositiveInt = 33554432
    upstream_connect_timeout: Seconds = 10.0
    upstream_read_timeout: Seconds = 600.0
    """Seconds allowed between two bytes of an upstream response."""
    client_header_timeout: Seconds = 60.0
    """Seconds a client connection may stay open without a complete request line and
    headers (from its start, or from its previous response: also the keep-alive idle time)."""
    client_body_timeout: Seconds = 60.0
    """Seconds a client has to send the whole request body."""
    admin_token_env: EnvName | None = "TOLLWAY_ADMIN_TOKEN"
    metrics_host: str = "127.0.0.1"
    """Address of the operators' listener serving /metrics (never the client port, which
    answers 404 there): loopback by default, so only this machine can scrape it."""
    metrics_port: Annotated[int, integer(0, 65535), Field(ge=0, le=65535)] = 9464
    """Port of the metrics listener; 0: no metrics listener at all."""
    metrics_token_env: EnvName | None = None
    """Environment variable holding a bearer token the metrics listener requires (null:
    none; then keep metrics_host on an operators-only network)."""
    timezone: str = "UTC"
    """IANA time zone whose month boundaries reset spend caps."""
    session_headers: tuple[Annotated[str, Strict()], ...] = (
        "x-tollway-session",
        "x-claude-code-session-id",
    )
    """Request headers carrying a session id (matched case-insensitively)."""

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("session_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.lower() for h in value)

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class Upstream(FrozenModel):
    base_url: HttpUrl
    """http:// or https:// URL, optionally with a path prefix; a trailing "/" is dropped."""
    api_key_env: EnvName
    """Environment variable holding the upstream API key (read at load time)."""
    timeout: Seconds | None = None
    _api_key: SecretStr = PrivateAttr(default=SecretStr(""))

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Upstream:
        self._api_key = resolve_secret(info, "Upstream", "api_key_env", self.api_key_env)
        return self

    @property
    def api_key(self) -> SecretStr:
        """The key read from ``api_key_env``; ``.get_secret_value()`` to use it."""
        return self._api_key


class MeteringConfig(FrozenModel):
    count_cache_reads_in_tpm: StrictBool = False
    tiktoken_encoding: str | None = None
    max_tokens_per_request: PositiveInt = 10_000_000
    """The sanity ceiling of one usage count: an upstream report above it is charged at
    the ceiling and flagged (metric, log line, ledger event); the price book is checked
    against it (see ``tollway.config.pricing``)."""
    max_tool_requests: PositiveInt = 1_000
    """The same ceiling for one request's count of server-side tool requests."""
    default_output_tokens: PositiveInt = 1024
    """Output tokens a request is expected to produce (held against money limits at
    admission) while nothing is learned yet for its organization and model; the request's
    declared maximum (max_tokens...) lowers it. Once learned, a high percentile of the
    organization's real outputs on that model replaces it (docs/spend.md)."""
    drain_max_bytes: PositiveInt = 16_777_216
    """After a client leaves a metered stream, Tollway reads on (without relaying) until
    the upstream's usage arrives, at most this many bytes..."""
    drain_max_seconds: Seconds = 120.0
    """... and at most this many seconds; past either bound it hangs up and charges the
    input (as reported, else as estimated) and the tokens of the text generated so far."""


class Alerts(FrozenModel):
    """Threshold alerts, POSTed as JSON to `webhook_url` (signed when `secret_env` is set):
    each threshold once per period (a month) per cap, budget or included usage."""

    webhook_url: HttpUrl
    secret_env: EnvName | None = None
    """Environment variable with the signing secret (X-Tollway-Signature: sha256=HMAC)."""
    thresholds: tuple[Annotated[int, integer(1, 1000), Field(ge=1, le=1000)], ...] = (50, 80, 100)
    """Percentages of a limit that send an alert when reached."""
    low_balance: Money | None = None
    """Alert when a prepaid organization's credit balance falls below this (once a month)."""
    max_attempts: PositiveInt = 5
    """Deliveries are retried with exponential back-off (1 s, 2 s, 4 s...) up to this."""
    _secret: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Alerts:
        if self.secret_env is not None:
            self._secret = resolve_secret(info, "Alerts", "secret_env", self.secret_env)
        return self

    @property
    def secret(self) -> SecretStr | None:
        return self._secret


class Notifications(FrozenModel):
    alerts: Alerts | None = None
    """Threshold alerts of caps, budgets, included usage and low balances; null: none."""
    limit_requests_webhook: HttpUrl | None = None
    """URL the daily digest of pending limit-increase requests is POSTed to (JSON, one
    post per organization with pending requests); null: no digest."""
    digest_hour: Annotated[int, integer(0, 23), Field(ge=0, le=23)] = 9
    """Hour of the day, in server.timezone, from which the day's digest is posted."""
