"""The typed, immutable shape of a Tollway config (pydantic v2 models) and its JSON Schema.

Every model forbids unknown keys and is frozen; mappings are read-only
(``types.MappingProxyType``) and lists are tuples, so a ``Config`` can be shared between
tasks and swapped whole on reload without anyone mutating it.

Units, once and for all:

- money (prices, caps, included usage, auto-reload) is integer micro-USD, written in YAML as
  USD with at most 6 decimals and parsed exactly by ``tollway.config.money.parse_usd``;
- prices are micro-USD per million tokens;
- limits are per minute: ``tpm``/``input_tpm``/``output_tpm`` are integers, ``rpm`` is a
  ``Decimal`` with at most 3 decimals (per-user shares such as 0.37 are fractional);
- caps: ``null`` or ``"unlimited"`` means no cap.

Validation needs a context ``{"env": Mapping[str, str], "source": str | None}`` (given by
``tollway.config.loader``): upstream keys and payment secrets are read from ``env`` at load time and
are never written in the YAML; without a context ``os.environ`` is used.

Run ``python -m tollway.config.schema > config/tollway.schema.json`` to regenerate the schema file.
"""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal
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
from tollway.config.clients import ClientRule, with_built_ins
from tollway.config.money import format_usd
from tollway.config.pricebook import PriceBook
from tollway.config.pricing import Price, PriceAliases, check_prices
from tollway.config.values import (
    Cap,
    Count,
    EnvName,
    FrozenMap,
    FrozenModel,
    HttpUrl,
    ModelMap,
    Money,
    Name,
    PositiveInt,
    Rate,
    Seconds,
    StrictBool,
    empty_map,
    environment,
    fail,
    integer,
    resolve_secret,
)

# ---- models ------------------------------------------------------------------------------

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


LimitKind = Literal["rpm", "tpm", "input_tpm", "output_tpm"]
LIMIT_KINDS: tuple[LimitKind, ...] = ("rpm", "tpm", "input_tpm", "output_tpm")


class Limits(FrozenModel):
    """Per-minute limits; an absent or null limit does not apply."""

    rpm: Rate | None = None
    tpm: Count | None = None
    input_tpm: Count | None = None
    output_tpm: Count | None = None
    max_in_flight: PositiveInt | None = None
    """At most this many admitted requests not yet settled at once (exact; a request
    beyond it is refused with a rate-limit error)."""

    def per_minute(self, kind: LimitKind) -> Decimal | None:
        value = getattr(self, kind)
        return None if value is None else Decimal(value)

    def milli_per_minute(self, kind: LimitKind) -> int | None:
        """The limit times 1000 as an integer (exact: rpm has at most 3 decimals)."""
        value = self.per_minute(kind)
        return None if value is None else int(value * 1000)

    @property
    def empty(self) -> bool:
        return all(getattr(self, kind) is None for kind in LIMIT_KINDS)


class AutoReload(FrozenModel):
    threshold: Money
    """Buy when a settle leaves the balance below this."""
    target: Money
    """Buy (target - balance); must be greater than threshold."""

    @model_validator(mode="after")
    def _order(self) -> AutoReload:
        if self.target <= self.threshold:
            message = f"must be greater than threshold ({format_usd(self.threshold)})"
            fail("AutoReload", (("target",), message, format_usd(self.target)))
        return self


class Payment(FrozenModel):
    provider: Literal["none", "webhook"] = "none"
    webhook_url: HttpUrl | None = None
    """Required when provider is webhook."""
    secret_env: EnvName | None = None
    """Environment variable with the webhook's signing secret (read at load time)."""
    _secret: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Payment:
        if self.provider == "webhook" and self.webhook_url is None:
            fail("Payment", (("webhook_url",), "required when provider is 'webhook'", None))
        if self.secret_env is not None:
            self._secret = resolve_secret(info, "Payment", "secret_env", self.secret_env)
        return self

    @property
    def secret(self) -> SecretStr | None:
        return self._secret


class Billing(FrozenModel):
    mode: Literal["prepaid", "postpaid"] = "postpaid"
    auto_reload: AutoReload | None = None
    payment: Payment = Payment()
    promo_expiry_days: PositiveInt = 90


class SpendCaps(FrozenModel):
    monthly: Cap = None
    """Monthly cap on extra usage; null or "unlimited": no cap."""
    daily: Cap = None
    """Cap on extra usage per calendar day of server.timezone; null: none."""
    weekly: Cap = None
    """Cap on extra usage per calendar week (Monday to Sunday) of server.timezone."""


class ExtraUsage(FrozenModel):
    enabled: StrictBool = False
    users: tuple[Name, ...] | None = None
    """null: every user when enabled; a list: only these users of the organization."""


class SeatTier(FrozenModel):
    included: Money = 0
    """Usage included per user per month."""
    monthly_cap: Cap = None
    """Extra-usage cap of each user of the tier; null or "unlimited": no cap."""


class Workspace(FrozenModel):
    limits: Limits = Limits()
    spend_caps: SpendCaps = SpendCaps()


CapMode = Literal["inherit", "unlimited", "amount"]


class User(FrozenModel):
    seat: Name | None = None
    """A seat tier of the organization."""
    workspace: Name | None = None
    limits: Limits = Limits()
    monthly_cap: Cap = Field(None, json_schema_extra=lambda schema: schema.pop("default"))
    """Absent: the tier's cap; null or "unlimited": no cap of the user's own; an amount."""

    @property
    def cap_mode(self) -> CapMode:
        if "monthly_cap" not in self.model_fields_set:
            return "inherit"
        return "unlimited" if self.monthly_cap is None else "amount"


def _unknown(what: str, name: str, known: Mapping[str, Any]) -> str:
    names = ", ".join(sorted(known)) or "none defined"
    return f"unknown {what} {name!r} (known: {names})"


class Organization(FrozenModel):
    limits: Limits = Limits()
    model_limits: ModelMap[Limits] = Field(default_factory=empty_map)
    """Per-model limits at organization level, by model name."""
    billing: Billing = Billing()
    spend_caps: SpendCaps = SpendCaps()
    extra_usage: ExtraUsage = ExtraUsage()
    model_caps: ModelMap[SpendCaps] = Field(default_factory=empty_map)
    """Dollar caps per model name or pattern (``claude-opus-*``): monthly, daily, weekly,
    on the organization's extra usage of the models it matches."""
    seat_tiers: FrozenMap[SeatTier] = Field(default_factory=empty_map)
    workspaces: FrozenMap[Workspace] = Field(default_factory=empty_map)
    users: FrozenMap[User] = Field(default_factory=empty_map)
    client_workspaces: FrozenMap[Name] = Field(default_factory=empty_map)
    """Client (a rule of ``clients``) → the workspace all its requests go to, whatever key
    made them. A workspace not declared under ``workspaces`` exists with no limits of its
    own; no key can be created for a client workspace."""

    @model_validator(mode="before")
    @classmethod
    def _client_workspaces_exist(cls, data: Any) -> Any:
        """A client workspace not declared under ``workspaces`` is one with no limits."""
        if not isinstance(data, Mapping) or not isinstance(data.get("client_workspaces"), Mapping):
            return data
        declared = data.get("workspaces")
        declared = dict(declared) if isinstance(declared, Mapping) else {}
        wanted = [w for w in data["client_workspaces"].values() if isinstance(w, str)]
        missing: dict[str, Any] = {w: {} for w in wanted if w not in declared}
        return {**data, "workspaces": {**declared, **missing}} if missing else data

    def no_keys_for(self, workspace: str | None) -> str | None:
        """Why no key can be created for `workspace` (a client workspace), else None."""
        for client, ws in self.client_workspaces.items():
            if ws == workspace:
                return (
                    f"workspace {ws!r} is the workspace of the client {client!r}: its "
                    "requests go there automatically, whatever key makes them, so no key "
                    "can be created for it (create the key for the user or another workspace)"
                )
        return None

    @model_validator(mode="after")
    def _references(self) -> Organization:
        errors: list[tuple[tuple[str | int, ...], str, Any]] = []
        for name, user in self.users.items():
            if user.seat is not None and user.seat not in self.seat_tiers:
                message = _unknown("seat tier", user.seat, self.seat_tiers)
                errors.append((("users", name, "seat"), message, user.seat))
            if user.workspace is not None and user.workspace not in self.workspaces:
                message = _unknown("workspace", user.workspace, self.workspaces)
                errors.append((("users", name, "workspace"), message, user.workspace))
        for i, name in enumerate(self.extra_usage.users or ()):
            if name not in self.users:
                message = _unknown("user", name, self.users)
                errors.append((("extra_usage", "users", i), message, name))
        if errors:
            fail("Organization", *errors)
        return self

    def user_included(self, user_name: str) -> int:
        """Monthly usage included by the user's seat tier, micro-USD (0 without a seat)."""
        seat = self.users[user_name].seat
        return 0 if seat is None else self.seat_tiers[seat].included


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


class Config(FrozenModel):
    store: StoreConfig = StoreConfig()
    ledger: LedgerConfig = LedgerConfig()
    server: ServerConfig = ServerConfig()
    upstreams: FrozenMap[Upstream] = Field(default_factory=empty_map)
    prices: ModelMap[Price] = Field(default_factory=empty_map)
    """Price per model name or pattern, in USD per million tokens (``tollway.config.pricing``)."""
    price_aliases: PriceAliases = Field(default_factory=empty_map)
    """Model names priced as another entry of ``prices``."""
    metering: MeteringConfig = MeteringConfig()
    organizations: FrozenMap[Organization] = Field(default_factory=empty_map)
    notifications: Notifications = Notifications()
    clients: FrozenMap[ClientRule] = Field(default_factory=empty_map)
    """Rules that recognize a client (a coding assistant) by its request headers; the
    built-in ``claude-code`` rule applies unless replaced (``tollway.config.clients``)."""
    _source: str | None = PrivateAttr(default=None)
    _book: PriceBook = PrivateAttr()

    @field_validator("upstreams", mode="before")
    @classmethod
    def _base_url_from_env(cls, value: Any, info: ValidationInfo) -> Any:
        """``$TOLLWAY_<NAME>_BASE_URL`` (``TOLLWAY_OPENAI_BASE_URL``...), when set, replaces
        that upstream's ``base_url``: a local or test server without editing the file."""
        if not isinstance(value, Mapping):
            return value
        env = environment(info)
        for name, upstream in value.items():
            url = env.get(f"TOLLWAY_{str(name).upper()}_BASE_URL")
            if url and isinstance(upstream, Mapping):
                value = {**value, name: {**upstream, "base_url": url}}
        return value

    @property
    def client_rules(self) -> Mapping[str, ClientRule]:
        """The configured client rules over the built-in ones."""
        return with_built_ins(self.clients)

    @model_validator(mode="after")
    def _known_clients(self) -> Config:
        rules = self.client_rules
        errors = [
            (
                ("organizations", org, "client_workspaces", client),
                _unknown("client", client, rules),
                client,
            )
            for org, o in self.organizations.items()
            for client in o.client_workspaces
            if client not in rules
        ]
        if errors:
            fail("Config", *errors)
        return self

    @model_validator(mode="after")
    def _remember_source(self, info: ValidationInfo) -> Config:
        self._source = (info.context or {}).get("source")
        m = self.metering
        errors = check_prices(
            self.prices, self.price_aliases, m.max_tokens_per_request, m.max_tool_requests
        )
        if errors:
            fail("Config", *errors)
        self._book = PriceBook(self.prices, self.price_aliases)
        return self

    @property
    def price_book(self) -> PriceBook:
        """The prices, looked up by model name (``tollway.config.pricebook.PriceBook``)."""
        return self._book

    @property
    def source(self) -> str | None:
        """The file this config was read from (None when it came from a string)."""
        return self._source


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the YAML file, for editors; secrets and ``source`` are
    not part of it (they are never written in the file)."""
    schema = Config.model_json_schema(mode="validation")
    _close_name_maps(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "Tollway configuration",
    }


def _close_name_maps(node: Any) -> None:
    """Mappings keyed by names list the allowed names as a pattern; make other keys
    invalid too, so that editors flag a name Tollway would refuse."""
    if isinstance(node, dict):
        if "patternProperties" in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_name_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_name_maps(value)


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2))
