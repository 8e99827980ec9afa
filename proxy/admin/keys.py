"""Admin routes for API keys: create (the secret shown once), list, show, revoke, rotate.

Keys carry a name, an optional expiry, a model allow-list of patterns and tags
(`tollway.limits.apikeys.KeySettings`). Each admin route module exposes ``ROUTES``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import Field, ValidationInfo, field_validator
from tollway.config.schema import Money
from tollway.limits.apikeys import (
    DEFAULT_OVERLAP_MS,
    LIMITS,
    KeyRecord,
    KeySettings,
    parse_limit,
    parse_list,
)
from tollway.limits.durations import parse_ms
from tollway.limits.errors import UnknownKey
from tollway.limits.plans import KeyLimits
from tollway.limits.seats import MAX_AMOUNT
from tollway.proxy.admin.context import (
    BOOL,
    INT,
    NULLABLE_STR,
    STR,
    ApiError,
    Body,
    answer,
    body,
    ctx,
    member,
    org,
    schema_object,
)
from tollway.proxy.admin.openapi import Route

_LIST = {"type": "array", "items": {"type": "string"}}


def _duration(value: str | None, zero: bool = False) -> str | None:
    if value is not None:
        parse_ms(value, zero=zero)  # ValueError: pydantic names the field
    return value


class KeyCreate(Body):
    """A new API key of the organization, optionally bound to a workspace and a user."""

    workspace: str | None = None
    user: str | None = None
    name: str = Field("", max_length=200)
    expires_in: str | None = Field(
        None, description="The key stops working after this long: `<N>s|m|h|d|w`, e.g. `30d`."
    )
    models: list[str] | None = Field(
        None,
        description="Model patterns the key may call (`*`, `?`), e.g. `gpt-4o*`; "
        "absent: every model.",
    )
    tags: list[str] = Field(default_factory=list, max_length=50)
    rpm: str | int | Decimal | None = Field(None, description="The key's own requests/minute.")
    tpm: str | int | Decimal | None = Field(None, description="The key's own tokens/minute.")
    input_tpm: str | int | Decimal | None = None
    output_tpm: str | int | Decimal | None = None
    budget: Money | None = Field(None, description="The key's spend budget (USD) per period.")
    budget_period: Literal["day", "week", "month"] = "month"
    session_budget: Money | None = Field(
        None, description="USD one session id may spend with the key (clients may ask less)."
    )

    @field_validator("rpm", "tpm", "input_tpm", "output_tpm")
    @classmethod
    def _limit(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None:
            parse_limit(str(info.field_name), v)
        return v

    _expires = field_validator("expires_in")(_duration)

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not parse_list(v, "models"):
            raise ValueError("give at least one pattern (omit models to allow every model)")
        return v

    @field_validator("budget", "session_budget")
    @classmethod
    def _budget(cls, v: int | None) -> int | None:
        if v is not None and v > MAX_AMOUNT:
            raise ValueError(f"at most {MAX_AMOUNT // 1_000_000} USD")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        parse_list(v, "tags")
        return v


class KeyRotate(Body):
    """Rotate a key's secret."""

    overlap: str | None = Field(
        None,
        description="How long the old secret keeps working: `<N>s|m|h|d|w`; `0s` stops it "
        f"at once (default {DEFAULT_OVERLAP_MS // 3_600_000}h).",
    )

    _overlap = field_validator("overlap")(lambda v: _duration(v, zero=True))


def _limits(b: KeyCreate) -> KeyLimits | None:
    found: dict[str, Any] = {
        n: parse_limit(n, getattr(b, n)) for n in LIMITS if getattr(b, n) is not None
    }
    if b.budget is not None:
        found["budget"], found["budget_period"] = b.budget, b.budget_period
    if b.session_budget is not None:
        found["session_budget"] = b.session_budget
    return KeyLimits(**found) if found else None


def _key(request: web.Request, r: KeyRecord) -> dict:
    return r.to_dict(ctx(request).clock.now_ms())


async def create_key(request: web.Request) -> web.Response:
    name, o = org(request)
    b = await body(request, KeyCreate)
    member(name, o, "workspace", b.workspace)
    member(name, o, "user", b.user)
    if refusal := o.no_keys_for(b.workspace):
        raise ApiError(400, refusal)
    c = ctx(request)
    now = c.clock.now_ms()
    settings = KeySettings(
        name=b.name,
        expires_ms=now + parse_ms(b.expires_in) if b.expires_in else None,
        models=parse_list(b.models, "models"),
        tags=parse_list(b.tags, "tags"),
        limits=_limits(b),
    )
    record, secret = await c.apikeys.create(name, now, b.workspace, b.user, settings=settings)
    return answer({**_key(request, record), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    name, _ = org(request)
    records = await ctx(request).apikeys.list(name)
    return answer({"keys": [_key(request, r) for r in records]})


async def _get(request: web.Request) -> KeyRecord:
    try:
        return await ctx(request).apikeys.get(request.match_info["key_id"])
    except UnknownKey:
        raise ApiError(404, f"no key {request.match_info['key_id']!r}") from None


async def get_key(request: web.Request) -> web.Response:
    return answer(_key(request, await _get(request)))


async def revoke_key(request: web.Request) -> web.Response:
    record = await _get(request)
    record = await ctx(request).apikeys.revoke(record.key_id)
    return answer(_key(request, record))


async def rotate_key(request: web.Request) -> web.Response:
    record = await _get(request)
    b = await body(request, KeyRotate)
    overlap = DEFAULT_OVERLAP_MS if b.overlap is None else parse_ms(b.overlap, zero=True)
    c = ctx(request)
    try:
        record, secret = await c.apikeys.rotate(record.key_id, c.clock.now_ms(), overlap)
    except UnknownKey as e:
        raise ApiError(409, str(e)) from None
    return answer({**_key(request, record), "key": secret})


_KEY = schema_object(
    ("id", "org", "name", "hint", "created_ms", "revoked", "status", "models", "tags"),
    id=STR,
    org=STR,
    workspace=NULLABLE_STR,
    user=NULLABLE_STR,
    name=STR,
    hint=STR,
    created_ms=INT,
    created=STR,
    revoked=BOOL,
    status={"enum": ["active", "expired", "revoked"]},
    expires_ms={"type": ["integer", "null"]},
    expires=NULLABLE_STR,
    models=_LIST,
    tags=_LIST,
    rotated_ms={"type": ["integer", "null"]},
    old_secret_until_ms={"type": ["integer", "null"]},
    limits=schema_object((), **{n: NULLABLE_STR for n in LIMITS}),
    budget_micro={"type": ["integer", "null"]},
    budget_period={"type": ["string", "null"]},
    session_budget_micro={"type": ["integer", "null"]},
)
_WITH_SECRET = {**_KEY, "required": [*_KEY["required"], "key"]}

ROUTES = [
    Route(
        "POST",
        "/orgs/{org}/keys",
        create_key,
        "Create an API key; the answer holds the secret (`key`), shown only this once.",
        "keys",
        _WITH_SECRET,
        status=201,
        body=KeyCreate,
    ),
    Route(
        "GET",
        "/orgs/{org}/keys",
        list_keys,
        "List an organization's keys (never their secrets).",
        "keys",
        schema_object(("keys",), keys={"type": "array", "items": _KEY}),
    ),
    Route("GET", "/keys/{key_id}", get_key, "Show one key.", "keys", _KEY),
    Route(
        "POST",
        "/keys/{key_id}/rotate",
        rotate_key,
        "Give a key a new secret (`key`, shown only this once); the old secret keeps "
        "working until the overlap ends (`old_secret_until_ms`), then is refused (401).",
        "keys",
        _WITH_SECRET,
        body=KeyRotate,
    ),
    Route(
        "POST",
        "/keys/{key_id}/revoke",
        revoke_key,
        "Revoke a key: refused on every proxy from the next request.",
        "keys",
        _KEY,
    ),
]
