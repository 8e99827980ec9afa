"""Users set at run time, merged over the YAML's: pure functions of config objects and the
run-time entries `tollway.limits.users` stores (no Redis here).

Precedence: the YAML declares; run-time settings override it, field by field; clearing a
run-time setting falls back to the YAML. An entry is ``{"added": bool, "seat": T,
"workspace": W, "limits": {"rpm": "2", ...}}``; an absent field means "as in the YAML" (for
a user added at run time: none).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from tollway.config.schema import Config, Limits, Organization, User

Entries = Mapping[str, Mapping[str, Any]]  # user -> run-time entry


def _user(base: User | None, entry: Mapping[str, Any], org_cfg: Organization) -> User:
    """The effective user: the YAML's (or an empty one) with the run-time entry on top.
    A seat or workspace the YAML no longer defines is ignored."""
    update: dict[str, Any] = {}
    if entry.get("seat") in org_cfg.seat_tiers:
        update["seat"] = entry["seat"]
    if entry.get("workspace") in org_cfg.workspaces:
        update["workspace"] = entry["workspace"]
    limits = (base.limits if base is not None else Limits()).model_dump(exclude_none=True)
    for name, value in entry.get("limits", {}).items():
        limits[name] = Decimal(value) if name == "rpm" else int(value)
    update["limits"] = Limits.model_validate(limits)
    if base is None:
        return User.model_construct(**update)
    return base.model_copy(update=update)


def merge(org_cfg: Organization, entries: Entries) -> Organization:
    """The organization with its run-time users merged in."""
    if not entries:
        return org_cfg
    users = dict(org_cfg.users)
    for name, entry in entries.items():
        base = org_cfg.users.get(name)
        if base is None and not entry.get("added"):
            continue  # settings of a YAML user the YAML no longer declares
        users[name] = _user(base, entry, org_cfg)
    return org_cfg.model_copy(update={"users": MappingProxyType(users)})


def with_users(cfg: Config, entries: Mapping[str, Entries]) -> Config:
    """The config with each organization's run-time users (org -> entries) merged in."""
    orgs = {name: merge(o, entries.get(name, {})) for name, o in cfg.organizations.items()}
    return cfg.model_copy(update={"organizations": MappingProxyType(orgs)})


class Overlay:
    """Stands where a `ConfigHolder` does: ``current`` is the holder's config with the
    run-time users last given (`update`) merged in, rebuilt only when either changes.
    Other attributes are the holder's (reload, listeners...).

    `reader` (set by whoever owns the store) reads an organization's entries when this
    process's copy is stale, and hands them to `update`; `refresh` calls it."""

    def __init__(self, holder: Any) -> None:
        self.holder = holder
        self.reader: Callable[[str], Awaitable[Any]] | None = None
        self._entries: dict[str, Entries] = {}
        self._base: Config | None = None
        self._merged: Config | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.holder, name)

    @property
    def base(self) -> Config:
        """The config as the YAML says, without run-time users."""
        return self.holder.current

    @property
    def current(self) -> Config:
        base = self.holder.current
        if base is not self._base or self._merged is None:
            self._merged = with_users(base, self._entries)
            self._base = base
        return self._merged

    async def refresh(self, org: str) -> None:
        """Bring `org`'s run-time users up to date (within the reader's max age)."""
        if self.reader is not None:
            await self.reader(org)

    def update(self, org: str, entries: Entries) -> None:
        """The run-time users of `org` as just read from the store."""
        if entries != self._entries.get(org, {}):
            self._entries[org] = dict(entries)
            self._merged = None

    def entry(self, org: str, user: str) -> Mapping[str, Any] | None:
        return self._entries.get(org, {}).get(user)
