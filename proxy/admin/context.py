"""What every admin route module shares: the context, JSON answers and errors, and the
validation helpers (bodies through pydantic models, query parameters, path names).

Errors are ``{"error": {"message": ...}}``: `ApiError` carries a status and a message;
`body()` turns a malformed or invalid body into a 400 that names the field and the problem.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from tollway.config.overlay import Overlay
from tollway.config.schema import Config, Organization
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import Clock
from tollway.limits.meter import periods
from tollway.limits.payments import PaymentProvider
from tollway.limits.store import Store
from tollway.limits.users import RuntimeUsers

M = TypeVar("M", bound=BaseModel)


@dataclass
class AdminContext:
    holder: Overlay  # `.current` is the live Config, run-time users merged in
    store: Store
    clock: Clock
    apikeys: ApiKeys
    env: Mapping[str, str] | None = None  # where the admin token is read (os.environ)
    users: RuntimeUsers | None = None  # users and seats set at run time

    @property
    def cfg(self) -> Config:
        return self.holder.current

    def token_name(self) -> str | None:
        return self.cfg.server.admin_token_env

    def token(self) -> str | None:
        """The admin token now (read on every request, so it can be rotated); None when
        the admin API is disabled."""
        name = self.token_name()
        if not name:
            return None
        value = (self.env if self.env is not None else os.environ).get(name, "")
        return value or None

    def today(self) -> str:
        """Today's date in the server's time zone (the day reports are kept by)."""
        return periods(self.clock.now_ms(), ZoneInfo(self.cfg.server.timezone))[1]

    def month(self) -> str:
        return periods(self.clock.now_ms(), ZoneInfo(self.cfg.server.timezone))[0]


ADMIN = web.AppKey("admin_context", AdminContext)
# The organization's payment provider, `(org config) -> PaymentProvider`, set on the proxy
# app by the auto-reloader and read through `request.config_dict` (absent: none).
PAYMENTS: web.AppKey[Callable[[Organization], PaymentProvider]] = web.AppKey("admin_payments")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Body(BaseModel):
    """Base of request bodies: unknown fields are errors; no type coercion (money fields
    parse USD text and numbers exactly, see ``tollway.config.schema.Money``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def ctx(request: web.Request) -> AdminContext:
    return request.app[ADMIN]


def answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str), status=status, content_type="application/json"
    )


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"error": {"message": message}})
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(body)"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


async def body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body validated by ``model``; numbers are read as exact decimals
    (never floats). A missing, malformed or invalid body is a 400 naming the problem."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "the request needs a JSON object body")
    try:
        data = json.loads(raw, parse_float=Decimal, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(400, _describe(e)) from None


def query(request: web.Request, name: str, default: str | None = None) -> str | None:
    value = request.query.get(name)
    return default if value is None or value == "" else value


def choice(request: web.Request, name: str, choices: Sequence[str], default: str) -> str:
    value = query(request, name, default) or default
    if value not in choices:
        raise ApiError(400, f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def org(request: web.Request) -> tuple[str, Organization]:
    """The ``{org}`` of the path and its config; 404 when the config has no such org."""
    # Config names are NFC (tollway.config.loader): "café" in either spelling is one org.
    name = unicodedata.normalize("NFC", request.match_info["org"])
    org_cfg = ctx(request).cfg.organizations.get(name)
    if org_cfg is None:
        raise ApiError(404, f"unknown organization {name!r}")
    return name, org_cfg


def member(org_name: str, org_cfg: Organization, what: str, name: str | None) -> str | None:
    """Check that a workspace/user/tier named in a body exists (400 otherwise)."""
    if name is None:
        return None
    known = {"workspace": org_cfg.workspaces, "user": org_cfg.users, "tier": org_cfg.seat_tiers}
    if name not in known[what]:
        raise ApiError(400, f"unknown {what} {name!r} in organization {org_name!r}")
    return name


def schema_object(required: Sequence[str] = (), **properties: Any) -> dict[str, Any]:
    """A JSON Schema object, for the answers described in the route tables."""
    return {"type": "object", "required": list(required), "properties": properties}


STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
BOOL: dict[str, Any] = {"type": "boolean"}
NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
