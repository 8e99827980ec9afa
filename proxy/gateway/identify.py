"""Who is calling: the one place a request's API key is read and resolved to a
`Principal`, for the proxied routes and the limit-request endpoint alike, and the one place
a recognized client's request is moved to its client workspace (`client_workspace`).

Refusals are `Reject` with a 401 ("key"). A store that cannot be reached raises
`StoreUnavailable`, except under the fail-open policy for a key this process already
knows; each caller turns it into its own 503.
"""

from __future__ import annotations

from dataclasses import replace

from multidict import CIMultiDictProxy
from tollway.config.clients import recognize
from tollway.config.schema import Config
from tollway.limits.apikeys import UNMETERED_MAX_AGE, ApiKeys
from tollway.limits.errors import ExpiredKey, StoreUnavailable, UnknownKey
from tollway.limits.plans import Principal
from tollway.proxy.gateway.call import Reject
from tollway.proxy.gateway.providers import Problem


def request_secret(headers: CIMultiDictProxy[str]) -> str | None:
    """The request's API key: a Bearer token or ``x-api-key``. Two different keys in one
    request (repeated headers, or both headers) are refused: a proxy in front of Tollway
    might have read the other one."""
    found = set()
    for auth in headers.getall("authorization", ()):
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            found.add(value.strip())
    found.update(key.strip() for key in headers.getall("x-api-key", ()) if key.strip())
    if len(found) > 1:
        raise Reject(Problem(401, "key", "Conflicting API keys: send one key, in one header."))
    return found.pop() if found else None


async def identify(
    headers: CIMultiDictProxy[str], apikeys: ApiKeys, cfg: Config, *, metered: bool
) -> tuple[Principal, str]:
    """The principal of the request's key, and the key.

    A metered request may use a cached answer of any age (the admit script checks
    revocation itself); an unmetered one re-reads an answer older than
    `UNMETERED_MAX_AGE`. A principal whose organization left the config is refused."""
    secret = request_secret(headers)
    if secret is None:
        raise Reject(Problem(401, "key", "Missing API key: send it as a Bearer token."))
    try:
        principal = await apikeys.resolve(secret, None if metered else UNMETERED_MAX_AGE)
    except ExpiredKey as e:  # its message says since when
        raise Reject(Problem(401, "key", str(e))) from None
    except UnknownKey:
        raise Reject(Problem(401, "key", "Invalid API key.")) from None
    except StoreUnavailable:
        # Fail-open serves a key this process already knows; an unknown key cannot be
        # authenticated without the store, whatever the policy.
        cached = apikeys.cached(secret) if cfg.store.on_unavailable == "open" else None
        if cached is None:
            raise
        principal = cached
    if principal.org not in cfg.organizations:
        raise Reject(Problem(401, "key", "Invalid API key: its organization is gone."))
    return principal, secret


def client_workspace(
    principal: Principal, headers: CIMultiDictProxy[str], cfg: Config
) -> Principal:
    """The principal as metered: a request of a recognized client (Claude Code...) whose
    organization names a workspace for that client goes to that workspace, whatever key
    made it; the key's user (and so its seat) still applies."""
    routes = cfg.organizations[principal.org].client_workspaces
    if not routes:
        return principal
    client = recognize(cfg.client_rules, headers)
    if client is None or client not in routes:
        return principal
    return replace(principal, workspace=routes[client])
