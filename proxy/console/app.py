"""The owner's web console, served by the proxy itself at ``/console``.

The pages are static files shipped in the package (``static/``: HTML, CSS, plain JS; no
build step). Everything they show or change goes through the admin API (``/admin/...``):
this module only signs people in and out.

    GET    /console                  the page (one document; the pages are its sections)
    GET    /console/static/{file}    its script and style sheet
    POST   /console/session          sign in: {"secret": "twa-..." | "tw-..."}
                                     200 {role, org, user, csrf} and the session cookie
                                     401 not an organization credential or a member's key
    GET    /console/session          who is signed in (the same answer), 401 nobody
    DELETE /console/session          sign out (needs x-csrf-token)

The cookie (``tollway_console``) is HttpOnly, SameSite=Strict, Path=/ (the admin API reads
it), Secure when the request came over HTTPS; it holds a random session id, never the
secret. A session names its credential or key, which the admin API checks on every
request (`tollway.proxy.admin.auth`), and carries a CSRF token the page sends back in
``x-csrf-token`` on every change. The operator's admin token does not sign in: the console
is an organization's, and the operator has the API and the CLI.
"""

from __future__ import annotations

import hmac
from importlib.resources import files
from pathlib import Path

import orjson
from aiohttp import web
from tollway.limits.console_sessions import TTL_SECONDS, ConsoleSession, ConsoleSessions
from tollway.limits.errors import StoreUnavailable
from tollway.proxy.admin.auth import COOKIE, CSRF_HEADER, WRITERS, from_secret, from_session
from tollway.proxy.admin.context import AdminContext, ApiError

STATIC = Path(str(files("tollway.proxy.console") / "static"))
CONSOLE = web.AppKey("console_context", AdminContext)
# The page loads only its own files; nothing may frame it (clickjacking).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
MAX_SIGN_IN_BODY = 4096


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"cache-control": "no-store"},
    )


def _problem(status: int, message: str) -> web.Response:
    return _json({"error": {"message": message}}, status)


def _who(session: ConsoleSession) -> dict[str, object]:
    """Who is signed in, and which concerns they may change (from the admin API's own
    rules, so the page shows the forms the API will accept and no others)."""
    return {
        "role": session.role,
        "org": session.org,
        "user": session.user or None,
        "csrf": session.csrf,
        "can": {tag: session.role in roles for tag, roles in WRITERS.items()},
    }


async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


async def sign_in(request: web.Request) -> web.Response:
    # A JSON body only: a cross-site form cannot send one without a CORS preflight.
    if request.content_type != "application/json":
        return _problem(415, 'send the secret as JSON: {"secret": "..."}')
    raw = await request.content.read(MAX_SIGN_IN_BODY + 1)
    try:
        secret = orjson.loads(raw).get("secret") if len(raw) <= MAX_SIGN_IN_BODY else None
    except (orjson.JSONDecodeError, AttributeError):
        secret = None
    if not isinstance(secret, str) or not secret.strip():
        return _problem(400, 'the body must be {"secret": "..."}')
    c = request.app[CONSOLE]
    try:
        who = await from_secret(c, secret.strip())
        if who is None or who.operator or who.org is None:
            message = "Not an organization credential (twa-...) or a member's key (tw-...)."
            return _problem(401, message)
        sid, session = await ConsoleSessions(c.store).create(
            who.role, who.org, who.cred or "", who.user or ""
        )
    except StoreUnavailable:
        return _problem(503, "Tollway cannot reach its store right now; please retry.")
    response = _json(_who(session))
    response.set_cookie(
        COOKIE,
        sid,
        path="/",
        max_age=TTL_SECONDS,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def current(request: web.Request) -> web.Response:
    c = request.app[CONSOLE]
    try:
        who = await from_session(c, request)
    except StoreUnavailable:
        return _problem(503, "Tollway cannot reach its store right now; please retry.")
    except ApiError as e:
        return _problem(e.status, e.message)
    if who is None or who.session is None:
        return _problem(401, "not signed in")
    return _json(_who(who.session))


async def sign_out(request: web.Request) -> web.Response:
    c = request.app[CONSOLE]
    sessions = ConsoleSessions(c.store)
    sid = request.cookies.get(COOKIE, "")
    try:
        session = await sessions.get(sid)
        if session is not None:
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                return _problem(403, f"missing or wrong CSRF token ({CSRF_HEADER})")
            await sessions.end(sid)
    except StoreUnavailable:
        return _problem(503, "Tollway cannot reach its store right now; please retry.")
    response = _json({"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    allowed = {p.name for p in STATIC.iterdir() if p.suffix in (".js", ".css", ".svg")}
    if name not in allowed:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name, headers=SECURITY_HEADERS)


def setup(app: web.Application, admin: AdminContext) -> None:
    """Add the console's routes to the proxy app; `admin` is the admin API's context."""
    app[CONSOLE] = admin
    app.router.add_get("/console", page)
    app.router.add_get("/console/", page)
    app.router.add_get("/console/static/{name}", static)
    app.router.add_post("/console/session", sign_in)
    app.router.add_get("/console/session", current)
    app.router.add_delete("/console/session", sign_out)
