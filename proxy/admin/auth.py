"""Who is calling the admin API, and what they may do.

Callers (`Caller.role`):

- ``operator``: the global admin token (``server.admin_token_env``): every route.
- ``owner``, ``admin``, ``billing``: an organization credential (`tollway.limits.admins`),
  as ``Authorization: Bearer twa-...`` or through a console session. They reach only their
  own organization: a route of another organization is 403, ``GET /admin/orgs`` lists only
  theirs. Reading is open to the three roles; a change needs the role the route's concern
  belongs to (`WRITERS`): billing buys credits and edits auto-reload, admin manages caps,
  extra usage, users, keys and requests, owner does all of these. Granting promotional
  credit, managing credentials and cross-organization lookups stay with the operator.
- ``member``: a user's own API key (``tw-...``) or a member's console session: their own
  status (``GET /orgs/{org}/users/{me}``) and filing their own limit-increase request,
  nothing else.

A console session is the ``tollway_console`` cookie (see `tollway.proxy.console`); every
request that changes state through it must carry the session's CSRF token in
``x-csrf-token``. The credential or key behind a session is checked again on every
request, so revoking it ends the session at once.

The rules are decided here, from the route table's tags, before any handler runs; handlers
that need to know the caller (the organization list, purchases) read `caller(request)`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import orjson
from aiohttp import web
from tollway.limits import admins as admin_credentials
from tollway.limits.apikeys import SECRET_PREFIX as KEY_PREFIX
from tollway.limits.console_sessions import ConsoleSession, ConsoleSessions
from tollway.limits.errors import UnknownKey
from tollway.proxy.admin.context import AdminContext, ApiError
from tollway.proxy.admin.openapi import Route

COOKIE = "tollway_console"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ORG_ROLES = frozenset(admin_credentials.ROLES)

# Who may change state, by the tag of the route (reads are open to the three roles).
# A tag missing here is the owner's alone.
WRITERS: dict[str, frozenset[str]] = {
    "credits": frozenset({"owner", "billing"}),
    "spend": frozenset({"owner", "admin"}),
    "approvals": frozenset({"owner", "admin"}),
    "keys": frozenset({"owner", "admin"}),
    "users": frozenset({"owner", "admin"}),
}
# Routes for the operator alone, whatever the method: (method, path), or a whole tag.
OPERATOR_ROUTES = frozenset(
    {("POST", "/orgs/{org}/credits/grants"), ("GET", "/sessions/{session_id}")}
)
OPERATOR_TAGS = frozenset({"admins"})
# What a member may call; the ``user`` (of the path or of the body) must be their own.
MEMBER_ROUTES = frozenset(
    {("GET", "/orgs/{org}/users/{user}"), ("POST", "/orgs/{org}/limit-requests")}
)
# Routes without an {org} that an organization reaches for its own things.
KEY_ROUTES = frozenset(
    {
        ("GET", "/keys/{key_id}"),
        ("PATCH", "/keys/{key_id}"),
        ("POST", "/keys/{key_id}/revoke"),
        ("POST", "/keys/{key_id}/rotate"),
    }
)
OPEN_ROUTES = frozenset({("GET", "/orgs"), ("GET", "/openapi.json")})


@dataclass(frozen=True, slots=True)
class Caller:
    role: str  # operator | owner | admin | billing | member
    org: str | None = None  # None for the operator
    user: str | None = None  # a member's user
    cred: str | None = None  # the credential or key id
    session: ConsoleSession | None = None

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def sees(self, org: str) -> bool:
        return self.operator or self.org == org


CALLER = web.RequestKey("admin_caller", Caller)


def caller(request: web.Request) -> Caller:
    """The caller the guard identified (set on every request that reaches a handler)."""
    return request[CALLER]


def same(given: str, token: str) -> bool:
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
    )


async def from_secret(c: AdminContext, secret: str) -> Caller | None:
    """The caller a secret stands for: the operator token, an organization credential, or
    the key of a user (member); None for anything else (a key with no user included)."""
    token = c.token()
    if token is not None and same(secret, token):
        return Caller("operator")
    if secret.startswith(admin_credentials.SECRET_PREFIX):
        try:
            cred = await admin_credentials.Credentials(c.store).resolve(secret)
        except UnknownKey:
            return None
        return Caller(cred.role, cred.org, cred=cred.cred_id)
    if secret.startswith(KEY_PREFIX):
        try:
            principal = await c.apikeys.resolve(secret, max_age=0.0)
        except UnknownKey:
            return None
        if principal.user is None:
            return None
        return Caller("member", principal.org, principal.user, principal.key_id)
    return None


async def from_session(c: AdminContext, request: web.Request) -> Caller | None:
    """The caller of the request's console session, if it is still in force; a state
    change without the session's CSRF token is a 403."""
    sid = request.cookies.get(COOKIE, "")
    session = await ConsoleSessions(c.store).get(sid) if sid else None
    if session is None:
        return None
    try:
        if session.role == "member":
            record = await c.apikeys.get(session.cred)
            if record.status(c.clock.now_ms()) != "active":  # revoked or expired
                return None
        else:
            await admin_credentials.Credentials(c.store).active(session.cred)
    except UnknownKey:
        return None
    if request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER, "")
        if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
            raise ApiError(403, f"missing or wrong CSRF token ({CSRF_HEADER})")
    return Caller(session.role, session.org, session.user or None, session.cred, session)


async def _body_user(request: web.Request) -> str | None:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return data.get("user") if isinstance(data, dict) else None


async def authorize(c: AdminContext, who: Caller, route: Route, request: web.Request) -> None:
    """Raise a 403 `ApiError` unless ``who`` may call ``route`` with this request."""
    if who.operator:
        return
    where = (route.method, route.path)
    if where in OPEN_ROUTES and (who.role != "member" or route.path == "/openapi.json"):
        return
    if where in OPERATOR_ROUTES or route.tag in OPERATOR_TAGS:
        raise ApiError(403, "only the operator's admin token may do this")
    org = request.match_info.get("org")
    if org is None:
        if where not in KEY_ROUTES or who.role == "member":
            raise ApiError(403, "only the operator's admin token may do this")
        try:
            record = await c.apikeys.get(request.match_info["key_id"])
        except UnknownKey:
            return  # the handler answers 404
        org = record.org
    if org != who.org:
        raise ApiError(403, f"this credential is not allowed to reach organization {org!r}")
    if who.role == "member":
        if where not in MEMBER_ROUTES:
            raise ApiError(403, "a member's key reaches only the member's own usage")
        user = request.match_info.get("user") or await _body_user(request)
        if user != who.user:
            raise ApiError(403, f"a member's key reaches only its own user ({who.user!r})")
        return
    if route.method in SAFE_METHODS:
        return
    allowed = WRITERS.get(route.tag, frozenset({"owner"}))
    if who.role not in allowed:
        roles = " or ".join(sorted(allowed))
        raise ApiError(403, f"the {who.role} role cannot do this (it needs {roles})")
