"""Build the asyncio Redis client of a store URL.

==================================================  ====================================
URL                                                 client
==================================================  ====================================
``redis://[[user]:password@]host[:port][/db]``      one server (plain TCP)
``rediss://...``                                    one server over TLS (``?ssl_cert_reqs=``,
                                                    ``ssl_ca_certs=`` as redis-py reads them)
``unix://[[user]:password@]/path/to.sock[?db=N]``   one server over a Unix socket
``redis+sentinel://[[user]:password@]h:p[,h:p...]   the current primary of ``service`` as the
/service[/db][?sentinel_password=...]``             Sentinels name it, followed on failover
``redis+cluster://[[user]:password@]h:p[,h:p...]    Redis Cluster from its startup nodes
[?ssl=true]``
==================================================  ====================================

The password of a Sentinel URL is the data servers' password; Sentinels that have their own
take it from ``sentinel_password``. Default ports: 6379, and 26379 for Sentinels.

Every client decodes responses to ``str`` and has the same socket timeouts, so
`tollway.limits.store.Store` works the same on all of them. On a cluster, every key of an
organization carries the ``{org}`` hash tag (`tollway.limits.rkeys`), so each script, whose keys
are all of one organization, runs on one node.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.maint_notifications import MaintNotificationsConfig

SENTINEL, CLUSTER = "redis+sentinel", "redis+cluster"
_TRUE = frozenset({"1", "true", "yes", "on"})


def connect(
    url: str, timeout: float = 0.5, max_connections: int = 256
) -> aioredis.Redis | RedisCluster:
    """A client for `url` (not connected yet: it connects on its first command)."""
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": True,
    }
    scheme = urlsplit(url).scheme
    if scheme == SENTINEL:
        return _sentinel(url, common, max_connections)
    if scheme == CLUSTER:
        return _cluster(url, common, max_connections)
    if scheme in ("redis", "rediss", "unix"):
        return aioredis.from_url(
            url,
            retry_on_timeout=False,
            max_connections=max_connections,
            # With maintenance notifications on ("auto" under RESP3) the pool skips its
            # check for connections the server closed: after a Redis restart, every pooled
            # connection would fail one request. Off, a dead connection is reopened first.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            **common,
        )
    raise ValueError(f"unsupported store URL scheme {scheme!r}")


def parse_multi_host(
    url: str, default_port: int
) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """(username, password, [(host, port), ...]) of ``scheme://[user:pass@]h:p,h:p/...``."""
    netloc = urlsplit(url).netloc
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):  # [IPv6]:port
            host, _, rest = part[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        try:
            nodes.append((host, int(port) if port else default_port))
        except ValueError:
            raise ValueError(f"bad port in store URL host {part!r}") from None
    if not nodes:
        raise ValueError("the store URL names no host")
    return username, password, nodes


def _query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


class SentinelManagedRedis(aioredis.Redis):
    """The primary's client; closing it also closes the connections to the Sentinels."""

    # Not `sentinel`: redis' own command mixin has a `sentinel()` method of that name.
    sentinel_client: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_client is not None:
            for s in self.sentinel_client.sentinels:
                await s.aclose()


def _sentinel(url: str, common: dict[str, Any], max_connections: int) -> SentinelManagedRedis:
    username, password, nodes = parse_multi_host(url, 26379)
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("a sentinel URL ends with /service_name or /service_name/db")
    service = unquote(parts[0])
    db = int(parts[1]) if len(parts) == 2 else 0
    query = _query(url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": common["socket_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"],
    }
    if query.get("sentinel_password"):
        sentinel_kwargs["password"] = query["sentinel_password"]
    sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        service,
        redis_class=SentinelManagedRedis,
        db=db,
        username=username,
        password=password,
        max_connections=max_connections,
        retry_on_timeout=False,
        **common,
    )
    client.sentinel_client = sentinel
    return client


class Cluster(RedisCluster):
    """A cluster client whose "no node reachable" is a connection error, so the store
    reports it as `StoreUnavailable` like any other outage (redis-py raises the generic
    `RedisClusterException` when it cannot discover the cluster)."""

    async def initialize(self, *args: Any, **kwargs: Any) -> Cluster:
        try:
            await super().initialize(*args, **kwargs)
        except rexc.RedisClusterException as e:
            raise rexc.ConnectionError(str(e)) from e
        return self


def _cluster(url: str, common: dict[str, Any], max_connections: int) -> Cluster:
    username, password, nodes = parse_multi_host(url, 6379)
    if urlsplit(url).path.strip("/"):
        raise ValueError("a cluster URL has no database number: Redis Cluster only has db 0")
    query = _query(url)
    return Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=username,
        password=password,
        ssl=query.get("ssl", "").lower() in _TRUE,
        max_connections=max_connections,
        **common,
    )
