"""The admin API's route table and the OpenAPI 3.1 document built from it.

Every admin route is declared once, as a `Route` (method, path, handler, parameters, body
model, answer schema); `tollway.proxy.admin.app` registers the handlers from the same table that
`document` describes, so the document cannot drift from the routes. Request bodies are
pydantic models: the document shows their JSON Schema, and the handlers validate with them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PATH_PARAMS = {
    "org": "An organization of the config.",
    "key_id": "An API key id (`key_...`).",
    "session_id": "A session id, as sent in a session header (`x-tollway-session`).",
    "user": "A user of the organization.",
    "workspace": "A workspace of the organization.",
    "tier": "A seat tier of the organization.",
    "request_id": "A limit-increase request id.",
    "month": "A month, `YYYY-MM`.",
    "admin_id": "An organization credential id (`adm_...`).",
}


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # under /admin, aiohttp syntax: /orgs/{org}/keys
    handler: Handler
    summary: str
    tag: str
    answer: dict[str, Any]  # JSON Schema of the success answer
    status: int = 200
    query: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    csv: bool = False  # also answers text/csv (with ?format=csv)
    refusals: tuple[tuple[int, str], ...] = ()  # statuses of this route only, documented

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def matches(self, path: str) -> bool:
        """Whether ``path`` (under /admin) has this route's shape."""
        mine, theirs = self.path.split("/"), path.split("/")
        return len(mine) == len(theirs) and all(
            a == b or (a.startswith("{") and b != "") for a, b in zip(mine, theirs, strict=True)
        )


ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message"],
            "properties": {"message": {"type": "string"}},
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": _PATH_PARAMS.get(name, name),
            "schema": {"type": "string", "minLength": 1},
        }
        for name in route.path_params
    ]
    params += [
        {
            "name": p.name,
            "in": "query",
            "required": p.required,
            "description": p.description,
            "schema": p.schema,
        }
        for p in route.query
    ]
    content: dict[str, Any] = {"application/json": {"schema": route.answer}}
    if route.csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    op: dict[str, Any] = {
        "operationId": f"{route.method.lower()}_{_slug(route.path)}",
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": params,
        "responses": {
            str(route.status): {"description": route.summary, "content": content},
            "400": _error("Invalid parameters or body; the message says which and why."),
            "401": _error("Missing or wrong admin token, credential or member key."),
            "403": _error(
                "Not allowed for this caller (another organization, a role without this "
                "right, a missing CSRF token), or the admin API is disabled."
            ),
            "404": _error("No such organization, key, session or request."),
            "409": _error("A limit-increase request is not pending (or already is)."),
            "503": _error("The store (Redis) is unavailable."),
            **{str(status): _error(text) for status, text in route.refusals},
        },
    }
    if route.body is not None:
        schema = route.body.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[route.body.__name__] = schema
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}
                }
            },
        }
    return op


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root"


def document(routes: Sequence[Route], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (served at ``/admin/openapi.json``)."""
    components: dict[str, Any] = {"Error": ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault("/admin" + route.path, {})[route.method.lower()] = _operation(
            route, components
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollway admin API",
            "version": version,
            "description": (
                "Manage keys, credits, spend caps and approvals, and read usage, cost, "
                "session and live limit reports. Every route needs "
                "`Authorization: Bearer <secret>`: the operator's admin token (the value "
                "of the environment variable named by `server.admin_token_env`) reaches "
                "every route; an organization credential (`twa-...`, role owner, admin or "
                "billing) reaches its organization's routes (billing: credits and "
                "auto-reload; admin: caps, extra usage, users, keys and requests; owner: "
                "all of these; reading: all three), `GET /admin/orgs` lists only its "
                "organization; a member's API key reaches `GET /orgs/{org}/users/{user}` "
                "and `POST /orgs/{org}/limit-requests` for its own user. The console's "
                "session cookie works in place of the header, with `x-csrf-token` on "
                "every state change. Money is "
                "integer micro-USD (`*_micro`) with an exact USD text beside it "
                "(`*_usd`); amounts sent are USD as a string or a number, at most 6 "
                'decimals. Errors are `{"error": {"message": ...}}`.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
