"""Console sign-in sessions, kept in the store so that every proxy process and replica
knows them.

A session is created when someone signs in to the console with an organization credential
or a member's API key; the browser holds only a random session id (in an HttpOnly cookie),
the store holds ``tw:console:<sha256(id)>`` -> who signed in and the session's CSRF token,
with a time-to-live. The session never holds the secret that was presented: it names the
credential (``cred``) or key (``key``), which the admin API checks again on every request,
so revoking them ends the session at once.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass

from tollway.limits.apikeys import digest
from tollway.limits.store import Store

TTL_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    role: str  # owner | admin | billing | member
    org: str
    cred: str  # the credential id (roles) or the API key id (member)
    user: str  # the member's user ("" for a role)
    csrf: str  # sent back by the page in x-csrf-token on every state change


class ConsoleSessions:
    def __init__(self, store: Store, ttl_seconds: int = TTL_SECONDS) -> None:
        self.store = store
        self.ttl = ttl_seconds

    async def create(
        self, role: str, org: str, cred: str, user: str = ""
    ) -> tuple[str, ConsoleSession]:
        """A new session: returns its id (for the cookie) and its record."""
        sid = secrets.token_urlsafe(32)
        session = ConsoleSession(role, org, cred, user, secrets.token_urlsafe(24))
        key = self.store.keys.console_session(digest(sid))
        client = self.store.client
        await self.store.call("console_session", client.hset, key, mapping=asdict(session))
        await self.store.call("console_session", client.expire, key, self.ttl)
        return sid, session

    async def get(self, sid: str) -> ConsoleSession | None:
        """The session of an id, or None (unknown, expired, signed out)."""
        if not sid or len(sid) > 200:
            return None
        key = self.store.keys.console_session(digest(sid))
        h = await self.store.call("console_session", self.store.client.hgetall, key)
        if not h:
            return None
        return ConsoleSession(h["role"], h["org"], h["cred"], h.get("user", ""), h["csrf"])

    async def end(self, sid: str) -> None:
        key = self.store.keys.console_session(digest(sid))
        await self.store.call("console_session", self.store.client.delete, key)
