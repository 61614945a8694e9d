"""TLS through Hypercorn's certificate options (`yap serve --certfile --keyfile`),
with a self-signed certificate made at test time by the cryptography package."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from reliability_net import open_ws, start_session, turn, yap_server
from yap_core.server_process import ServerProcess, http_get

KEY = "tls-test-key"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its private key (PEM files)."""
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "yap test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ssl.SSLContext]]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    trust = ssl.create_default_context(cafile=str(cert))
    with yap_server(tmp, {"TEXT_API_KEY": KEY}, args=("--certfile", str(cert), "--keyfile", str(key)),
                    scheme="https", ssl_context=trust) as server:
        yield server, trust


async def test_wss_turn_and_https_status(tls_server: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, trust = tls_server
    assert server.ws_url.startswith("wss://")
    ws = await open_ws(server.ws_url, KEY, ssl=trust)
    await start_session(ws, "tls")
    frames = await turn(ws, "tls", "hello over tls")
    assert frames[-1]["type"] == "done"
    assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    await ws.close()
    answer = await asyncio.to_thread(http_get, server.base_url + "/status", {"X-API-Key": KEY}, context=trust)
    assert answer.status == 200 and answer.body["active_turns"] == 0


async def test_untrusted_certificate_is_refused(tls_server: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, _ = tls_server
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_ws(server.ws_url, KEY, ssl=ssl.create_default_context())


async def test_plain_http_gets_no_service(tls_server: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, _ = tls_server
    plain = f"http://{server.host}:{server.port}/healthz"
    with pytest.raises((OSError, http.client.HTTPException)):  # the TLS listener speaks no cleartext HTTP
        await asyncio.to_thread(http_get, plain, None, timeout=5.0)
