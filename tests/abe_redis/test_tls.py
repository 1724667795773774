"""TLS end to end against a real redis-server with its own certificate authority."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from abe_redis import RedisStreamsBackend
from abe_redis_testing.servers import RedisServer, find_binary, free_port

from .helpers import take

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is needed to make test certificates"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=abe-redis test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=d,
    )
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
        cwd=d,
    )
    return d


@pytest.fixture(scope="module")
def tls_port(certificates: Path) -> Iterator[int]:
    port = free_port()
    server = RedisServer(
        find_binary("redis-server"),
        extra_args=[
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(certificates / "server.crt"),
            "--tls-key-file",
            str(certificates / "server.key"),
            "--tls-ca-cert-file",
            str(certificates / "ca.crt"),
            "--tls-auth-clients",
            "no",
        ],
    ).start()
    yield port
    server.cleanup()


async def test_rediss_url_with_ca_round_trips(tls_port: int, certificates: Path) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0"
    async with RedisStreamsBackend.from_url(
        url, ssl_ca_certs=str(certificates / "ca.crt"), block_ms=100
    ) as backend:
        await backend.publish("secure", {"over": "tls"})
        stream = backend.consume()
        try:
            assert await take(stream, 1) == [{"over": "tls"}]
        finally:
            await stream.aclose()


async def test_redis_ssl_true_upgrades_a_plain_url(tls_port: int, certificates: Path) -> None:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{tls_port}/0",
        "REDIS_SSL": "true",
        "REDIS_SSL_CA_CERTS": str(certificates / "ca.crt"),
    }
    async with RedisStreamsBackend.from_env(env) as backend:
        await backend.publish("secure-env", {"ok": 1})
        assert await backend.client.xlen("secure-env") == 1


async def test_untrusted_certificate_is_refused(tls_port: int) -> None:
    # The system store does not know our test CA: verification must fail, not be skipped.
    backend = RedisStreamsBackend.from_url(f"rediss://127.0.0.1:{tls_port}/0", retry_attempts=0)
    try:
        with pytest.raises(RedisConnectionError, match=r"(?i)certificate"):
            await backend.publish("x", {"a": 1})
    finally:
        await backend.aclose()
