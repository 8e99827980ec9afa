"""Users set at run time, merged over the YAML's: pure functions of config objects and the
run-time entries `tollway.limits.users` stores (no Redis here).

Precedence: the YAML declares; run-time settings override it, field by field; clearing a
run-time setting falls back to the YAML. An entry is ``{"added": bool, "seat": T,
"workspace": W, "limits": {"rpm": "2", ...}}``; an absent field means "as in the YAML" (for
a user added at run time: none).

Model names and patterns given a cap at run time (``tollway caps set --model P``) join
the organization's ``model_caps`` with no cap of their own: the cap in force is the
run-time override the scripts read; being in ``model_caps`` makes their spend counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from tollway.config.reload import ConfigSource
from tollway.config.schema import Config, Limits, Organization, SpendCaps, User

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


def merge(org_cfg: Organization, entries: Entries, patterns: Collection[str] = ()) -> Organization:
    """The organization with its run-time users merged in, and the model names or patterns
    given a cap at run time (`patterns`) added to ``model_caps`` (with no cap of the YAML's:
    their caps are the run-time overrides) when the YAML does not declare them."""
    update: dict[str, Any] = {}
    if entries:
        users = dict(org_cfg.users)
        for name, entry in entries.items():
            base = org_cfg.users.get(name)
            if base is None and not entry.get("added"):
                continue  # settings of a YAML user the YAML no longer declares
            users[name] = _user(base, entry, org_cfg)
        update["users"] = MappingProxyType(users)
    new = sorted(p for p in patterns if p not in org_cfg.model_caps)
    if new:
        model_caps = {**org_cfg.model_caps, **{p: SpendCaps() for p in new}}
        update["model_caps"] = MappingProxyType(model_caps)
    return org_cfg.model_copy(update=update) if update else org_cfg


def with_users(
    cfg: Config,
    entries: Mapping[str, Entries],
    patterns: Mapping[str, Collection[str]] | None = None,
) -> Config:
    """The config with each organization's run-time users (org -> entries) and model-cap
    patterns (org -> names or patterns) merged in."""
    patterns = patterns or {}
    orgs = {
        name: merge(o, entries.get(name, {}), patterns.get(name, ()))
        for name, o in cfg.organizations.items()
    }
    return cfg.model_copy(update={"organizations": MappingProxyType(orgs)})


class Overlay:
    """Stands where a `ConfigHolder` does: ``current`` is the holder's config with the
    run-time users and model-cap patterns last given (`update`) merged in, rebuilt only
    when one of them changes. Other attributes are the holder's (reload, listeners...).

    `reader` (set by whoever owns the store) reads an organization's entries when this
    process's copy is stale, and hands them to `update`; `refresh` calls it."""

    def __init__(self, holder: ConfigSource) -> None:
        self.holder = holder
        self.reader: Callable[[str], Awaitable[Any]] | None = None
        self._entries: dict[str, Entries] = {}
        self._patterns: dict[str, frozenset[str]] = {}
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
            self._merged = with_users(base, self._entries, self._patterns)
            self._base = base
        return self._merged

    async def refresh(self, org: str) -> None:
        """Bring `org`'s run-time users up to date (within the reader's max age)."""
        if self.reader is not None:
            await self.reader(org)

    def update(self, org: str, entries: Entries, patterns: Collection[str] = ()) -> None:
        """The run-time users and model-cap patterns of `org` as just read from the store."""
        if entries != self._entries.get(org, {}):
            self._entries[org] = dict(entries)
            self._merged = None
        if frozenset(patterns) != self._patterns.get(org, frozenset()):
            self._patterns[org] = frozenset(patterns)
            self._merged = None

    def entry(self, org: str, user: str) -> Mapping[str, Any] | None:
        return self._entries.get(org, {}).get(user)
