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
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict
from tollway.config.clients import ClientRule, with_built_ins
from tollway.config.money import format_usd
from tollway.config.pricebook import PriceBook
from tollway.config.pricing import Price, PriceAliases, check_prices
from tollway.config.settings import (
    LedgerConfig,
    MeteringConfig,
    Notifications,
    ServerConfig,
    StoreConfig,
    Upstream,
)
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
    StrictBool,
    empty_map,
    environment,
    fail,
    resolve_secret,
)

# ---- models ------------------------------------------------------------------------------

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

    def of(self, period: str) -> int | None:
        """The cap of `period` (month | day | week); None: none."""
        return {"month": self.monthly, "day": self.daily, "week": self.weekly}[period]


class ExtraUsage(FrozenModel):
    enabled: StrictBool = False
    users: tuple[Name, ...] | None = None
    """null: every user when enabled; a list: only these users of the organization."""


# A seat tier's or a user's cap of each period (month | day | week), by field name.
CAP_FIELDS = {"month": "monthly_cap", "day": "daily_cap", "week": "weekly_cap"}


class SeatTier(FrozenModel):
    included: Money = 0
    """Usage included per user per month."""
    monthly_cap: Cap = None
    """Extra-usage cap of each user of the tier; null or "unlimited": no cap."""
    daily_cap: Cap = None
    """Extra-usage cap of each user of the tier per calendar day of server.timezone."""
    weekly_cap: Cap = None
    """Extra-usage cap of each user of the tier per calendar week (Monday first)."""

    def cap_of(self, period: str) -> int | None:
        """The tier's cap of `period` (month | day | week); None: none."""
        cap: int | None = getattr(self, CAP_FIELDS[period])
        return cap


class Workspace(FrozenModel):
    limits: Limits = Limits()
    spend_caps: SpendCaps = SpendCaps()


CapMode = Literal["inherit", "unlimited", "amount"]


def _no_default(schema: JsonDict) -> None:
    """The JSON schema states no default: an absent cap (inherit) is not a null one."""
    schema.pop("default")


class User(FrozenModel):
    seat: Name | None = None
    """A seat tier of the organization."""
    workspace: Name | None = None
    limits: Limits = Limits()
    monthly_cap: Cap = Field(None, json_schema_extra=_no_default)
    """Absent: the tier's cap; null or "unlimited": no cap of the user's own; an amount."""
    daily_cap: Cap = Field(None, json_schema_extra=_no_default)
    """Per calendar day of server.timezone; absent: the tier's, as monthly_cap."""
    weekly_cap: Cap = Field(None, json_schema_extra=_no_default)
    """Per calendar week (Monday first); absent: the tier's, as monthly_cap."""

    @property
    def cap_mode(self) -> CapMode:
        return self.cap_mode_of("month")

    def cap_mode_of(self, period: str) -> CapMode:
        """Whether the user's own cap of `period` (month | day | week) is absent (the
        tier's applies), unlimited, or an amount."""
        name = CAP_FIELDS[period]
        if name not in self.model_fields_set:
            return "inherit"
        return "unlimited" if getattr(self, name) is None else "amount"

    def cap_of(self, period: str) -> int | None:
        cap: int | None = getattr(self, CAP_FIELDS[period])
        return cap


def _unknown(what: str, name: str, known: Mapping[str, Any]) -> str:
    names = ", ".join(sorted(known)) or "none defined"
    return f"unknown {what} {name!r} (known: {names})"


class Organization(FrozenModel):
    limits: Limits = Limits()
    model_limits: ModelMap[Limits] = Field(default_factory=empty_map)
    """Per-model limits of the whole organization, by model name."""
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
