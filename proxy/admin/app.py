"""The admin API, mounted under ``/admin`` by `tollway.proxy.runtime.app.create_app`.

Access (`tollway.proxy.admin.auth`): ``Authorization: Bearer <secret>``, where the secret is
the operator's admin token (the value of the environment variable named by
``server.admin_token_env``, read on every request and compared in constant time), an
organization credential (``twa-...``, roles owner/admin/billing, its organization's routes
only) or a member's API key (their own status only); or a console session cookie (with a
CSRF token on every state change). With no operator token configured (the setting is null,
or the variable is unset or empty) the operator's access is disabled: a request with no
organization credential, member key or session answers 403 saying so; it is never open.
A missing or wrong secret is a 401; a route the caller may not use is a 403.

Every answer is JSON (the usage report can also be CSV); errors are
``{"error": {"message": ...}}``: 400 for invalid input, 404 for unknown names or routes,
405 for a known route with another method, 409 when a limit-increase request is not in
a state that allows the operation, 503 when the store is unreachable.

The routes are the tables of the ``proxy.admin_*`` modules plus
``GET /admin/openapi.json``, the OpenAPI 3.1 document built from those same tables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from tollway.config.overlay import Overlay
from tollway.config.reload import ConfigSource
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import Clock
from tollway.limits.errors import LimitsError, StoreUnavailable
from tollway.limits.increases import NoPendingRequest, RequestPending
from tollway.limits.store import Store
from tollway.limits.users import RuntimeUsers
from tollway.proxy.admin import admins as admin_admins
from tollway.proxy.admin import caps as admin_caps
from tollway.proxy.admin import credits as admin_credits
from tollway.proxy.admin import developers as admin_developers
from tollway.proxy.admin import keys as admin_keys
from tollway.proxy.admin import limits as admin_limits
from tollway.proxy.admin import orgs as admin_core
from tollway.proxy.admin import spend as admin_spend
from tollway.proxy.admin import users as admin_users
from tollway.proxy.admin.auth import CALLER, COOKIE, Caller, authorize, from_secret, from_session
from tollway.proxy.admin.context import ADMIN, AdminContext, ApiError, answer, ctx, error
from tollway.proxy.admin.openapi import Route, document

log = logging.getLogger("tollway.admin")


def _version() -> str:
    try:
        return version("tollway")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


async def openapi_json(request: web.Request) -> web.Response:
    return answer(request.app[OPENAPI])


def routes() -> list[Route]:
    """Every admin route, the OpenAPI document's own included."""
    table = [
        *admin_core.ROUTES,
        *admin_developers.ROUTES,
        *admin_keys.ROUTES,
        *admin_credits.ROUTES,
        *admin_spend.ROUTES,
        *admin_caps.ROUTES,
        *admin_users.ROUTES,
        *admin_limits.ROUTES,
        *admin_admins.ROUTES,
    ]
    schema = {"type": "object", "required": ["openapi", "paths"]}
    table.append(
        Route("GET", "/openapi.json", openapi_json, "This OpenAPI document.", "meta", schema)
    )
    return table


OPENAPI = web.AppKey("admin_openapi", dict)
ROUTE_TABLE = web.AppKey("admin_routes", list)
ROUTE_OF = web.AppKey("admin_route_of", dict)  # aiohttp route -> its `Route`


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def _identify(request: web.Request) -> Caller | web.Response:
    """The caller, or the 401/403 answer for a request that names nobody known."""
    c = ctx(request)
    given = _bearer(request)
    if given is not None:
        who = await from_secret(c, given)
    elif request.cookies.get(COOKIE):
        who = await from_session(c, request)
    else:
        who = None
    if who is not None:
        return who
    if c.token() is None:
        name = c.token_name()
        how = f"set the environment variable {name}" if name else "set server.admin_token_env"
        return error(
            403,
            f"The admin API is disabled: {how} to a secret token to enable it "
            "(organization credentials and members' keys work without it).",
        )
    headers = {"www-authenticate": 'Bearer realm="tollway-admin"'}
    message = "Missing or wrong admin token or credential (Authorization: Bearer ...)."
    return error(401, message, headers)


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Who is calling and whether they may, then the handler, with errors turned into
    JSON answers."""
    try:
        who = await _identify(request)
        if isinstance(who, web.Response):
            return who
        route = request.app[ROUTE_OF].get(request.match_info.route)
        if route is not None:  # None: no such route, the fallback answers 404 or 405
            await authorize(ctx(request), who, route, request)
        request[CALLER] = who
        org = request.match_info.get("org")
        if org is not None and org in ctx(request).holder.base.organizations:
            await ctx(request).holder.refresh(org)  # run-time users, as every replica sees
        return await handler(request)
    except ApiError as e:
        return error(e.status, e.message)
    except StoreUnavailable as e:
        log.warning("admin: store unavailable", extra={"path": request.path, "error": str(e)})
        return error(503, "Tollway cannot reach its store right now; please retry.")
    except (RequestPending, NoPendingRequest) as e:  # the request's state forbids it
        return error(409, str(e))
    except LimitsError as e:  # a refused operation (bad amount, identity already used...)
        return error(400, str(e))


async def _fallback(request: web.Request) -> web.Response:
    """No route matched: 405 when the path exists with other methods, else 404."""
    path = request.match_info["tail"]
    path = "/" + path
    allowed = sorted({r.method for r in request.app[ROUTE_TABLE] if r.matches(path)})
    if allowed:
        message = f"{request.method} is not allowed here; use {', '.join(allowed)}"
        return error(405, message, {"allow": ", ".join(allowed)})
    return error(404, f"no admin route {request.method} /admin{path}")


def create_admin_app(
    holder: ConfigSource,
    store: Store,
    clock: Clock,
    apikeys: ApiKeys,
    env: Mapping[str, str] | None = None,
    users: RuntimeUsers | None = None,
) -> web.Application:
    """The admin sub-application (mount it with ``app.add_subapp("/admin", ...)``).
    ``env`` is where the admin token is read (default: ``os.environ``, at each request)."""
    app = web.Application(middlewares=[guard])
    overlay = holder if isinstance(holder, Overlay) else Overlay(holder)
    if users is None:
        users = RuntimeUsers(store, overlay.update)
        overlay.reader = users.entries
    app[ADMIN] = AdminContext(overlay, store, clock, apikeys, env, users)
    table = routes()
    app[ROUTE_TABLE] = table
    app[OPENAPI] = document(table, _version())
    app[ROUTE_OF] = {app.router.add_route(r.method, r.path, r.handler): r for r in table}
    app.router.add_route("*", "/{tail:.*}", _fallback)
    return app
