"""Admin routes for organization credentials (roles owner, admin, billing): create, list,
revoke. For the operator's admin token only (`tollway.proxy.admin.auth` tags them
``admins``): an organization never mints or lists its own credentials.

A credential's secret (``twa-...``) is in the creation answer only, never again.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field
from tollway.limits.admins import Credentials
from tollway.limits.errors import UnknownCredential
from tollway.proxy.admin.context import (
    BOOL,
    INT,
    STR,
    ApiError,
    Body,
    answer,
    body,
    ctx,
    org,
    schema_object,
)
from tollway.proxy.admin.openapi import Route


class CredentialCreate(Body):
    """A new credential of the organization with one role."""

    role: Literal["owner", "admin", "billing"]
    name: str = Field("", max_length=200)


def _credentials(request: web.Request) -> Credentials:
    return Credentials(ctx(request).store)


async def create(request: web.Request) -> web.Response:
    name, _ = org(request)
    b = await body(request, CredentialCreate)
    now = ctx(request).clock.now_ms()
    record, secret = await _credentials(request).create(name, b.role, now, b.name)
    return answer({**record.to_dict(), "credential": secret}, status=201)


async def list_credentials(request: web.Request) -> web.Response:
    name, _ = org(request)
    records = await _credentials(request).list(name)
    return answer({"org": name, "admins": [r.to_dict() for r in records]})


async def revoke(request: web.Request) -> web.Response:
    cred_id = request.match_info["admin_id"]
    try:
        record = await _credentials(request).revoke(cred_id)
    except UnknownCredential:
        raise ApiError(404, f"no credential {cred_id!r}") from None
    return answer(record.to_dict())


_CREDENTIAL = schema_object(
    ("id", "org", "role", "name", "created_ms", "revoked", "hint"),
    id=STR,
    org=STR,
    role={"enum": ["owner", "admin", "billing"]},
    name=STR,
    created_ms=INT,
    revoked=BOOL,
    hint=STR,
)
ROUTES = [
    Route(
        "POST",
        "/orgs/{org}/admins",
        create,
        "Create an organization credential (owner, admin or billing); the answer holds "
        "the secret (`credential`), shown only this once. Operator only.",
        "admins",
        {**_CREDENTIAL, "required": [*_CREDENTIAL["required"], "credential"]},
        status=201,
        body=CredentialCreate,
    ),
    Route(
        "GET",
        "/orgs/{org}/admins",
        list_credentials,
        "List an organization's credentials (never their secrets). Operator only.",
        "admins",
        schema_object(("org", "admins"), org=STR, admins={"type": "array", "items": _CREDENTIAL}),
    ),
    Route(
        "POST",
        "/admins/{admin_id}/revoke",
        revoke,
        "Revoke a credential: refused from the next request, its console sessions end. "
        "Operator only.",
        "admins",
        _CREDENTIAL,
    ),
]
