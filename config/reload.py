"""Hot reload: build the whole new ``Config``, then swap one reference.

``ConfigHolder`` owns the current config. ``reload()`` re-reads ``config.source``; on
success the new config replaces the old one in a single assignment (a request that already
took ``holder.current`` keeps the config it started with) and the listeners run; on a
``ConfigError`` the old config stays in force, the error is logged on ``tollway.config``,
kept in ``last_error`` and counted in ``failure_count``, and the failure listeners run.
Listeners are how the proxy counts metrics or rebuilds derived state; an exception in a
listener is logged and does not undo the swap.

``watch()`` is the task the app starts (and cancels at shutdown): it polls the file and
reloads when its content changed. No Redis and no HTTP here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tollway.config.loader import ConfigError, parse_config_text
from tollway.config.schema import Config

log = logging.getLogger("tollway.config")


@dataclass(frozen=True, slots=True)
class _Read:
    """The config file as read once: its bytes and their hash."""

    data: bytes
    digest: str


class ConfigSource(Protocol):
    """Where the config in force is read: a `ConfigHolder`, or an overlay over one
    (`tollway.config.overlay.Overlay`). Read `current` on every use: a reload swaps it."""

    @property
    def current(self) -> Config: ...


class ConfigHolder:
    """Holds the current ``Config``. Not thread-safe for concurrent reloads: call
    ``reload``/``apply`` from one task (``watch`` does)."""

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        """``env`` is where secrets are read on reload (default: ``os.environ`` then)."""
        self._config = config
        self._env = env
        self._listeners: list[Callable[[Config], None]] = []
        self._failure_listeners: list[Callable[[str], None]] = []
        self.last_error: str | None = None
        self.reload_count = 0
        self.failure_count = 0

    @property
    def current(self) -> Config:
        return self._config

    def add_listener(self, fn: Callable[[Config], None]) -> None:
        """Call ``fn(new_config)`` after every successful swap."""
        self._listeners.append(fn)

    def add_failure_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(error_text)`` after every rejected reload."""
        self._failure_listeners.append(fn)

    def reload(self) -> bool:
        """Re-read ``current.source`` and swap it in; True on success, False when the file
        is unreadable or invalid (the old config stays in force)."""
        source = self._config.source
        if source is None:
            return self._failed("the current config was not loaded from a file")
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            return self._failed(f"{source}:1: (root): cannot read the file: {e.strerror}")
        return self._commit(self._parse(data, source))

    def apply(self, text: str, source: str) -> bool:
        """Validate ``text`` as the content of ``source`` and swap it in (see ``reload``)."""
        return self._commit(self._parse(text, source))

    def _parse(self, content: str | bytes, source: str) -> Config | str:
        """The new config, or the error text; touches no state (safe in a worker thread)."""
        try:
            text = content.decode() if isinstance(content, bytes) else content
            return parse_config_text(text, source, self._env)
        except UnicodeDecodeError:
            return f"{source}:1: (root): cannot read the file: not UTF-8 text"
        except ConfigError as e:
            return str(e)

    def _commit(self, outcome: Config | str) -> bool:
        if isinstance(outcome, str):
            return self._failed(outcome)
        config = self._config = outcome
        self.reload_count += 1
        self.last_error = None
        log.info("config reloaded from %s", config.source)
        for fn in self._listeners:
            try:
                fn(config)
            except Exception:
                log.exception("config reload listener %r failed", fn)
        return True

    def _failed(self, error: str) -> bool:
        self.last_error = error
        self.failure_count += 1
        log.error("config reload rejected, keeping the previous config:\n%s", error)
        for fn in self._failure_listeners:
            try:
                fn(error)
            except Exception:
                log.exception("config failure listener %r failed", fn)
        return False


def _read_file(path: str) -> _Read:
    data = Path(path).read_bytes()
    return _Read(data, hashlib.sha256(data).hexdigest())


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # mid-rename or deleted: wait for the file to come back
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def watch(holder: ConfigHolder, interval: float = 0.5) -> None:
    """Poll ``holder.current.source`` every ``interval`` seconds and reload when its
    content changes; runs until cancelled.

    A change is acted on once the file's (mtime_ns, size, inode) has stayed the same for
    one poll, so an editor caught mid-write does not produce a spurious failed reload;
    a change is therefore applied within about 2 x ``interval``. Touching a file without
    changing its bytes does nothing, and a rejected file is not retried until it changes
    again. The file is read and parsed in a worker thread; the swap and the listeners run
    on the event loop.
    """
    source = holder.current.source
    if source is None:
        raise ValueError("watch() needs a config loaded from a file")
    seen = _signature(source)
    try:
        digest = (await asyncio.to_thread(_read_file, source)).digest
    except OSError:
        digest = ""
    pending: tuple[int, int, int] | None = None
    while True:
        await asyncio.sleep(interval)
        signature = _signature(source)
        if signature is None or signature == seen:
            pending = None
            continue
        if signature != pending:  # changed since the last poll: let it settle
            pending = signature
            continue
        seen, pending = signature, None
        try:
            read = await asyncio.to_thread(_read_file, source)
        except OSError:
            seen = None  # look again at the next poll
            continue
        if read.digest == digest:
            continue
        digest = read.digest
        holder._commit(await asyncio.to_thread(holder._parse, read.data, source))
