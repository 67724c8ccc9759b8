"""Services on a NATS bus that requires TLS (with client certificates) or a token: a real nats-server started
from a config file, certificates made here with `cryptography`, a real graph-builder and query-api that connect,
carry a topology message through and answer a query; a wrong CA, a missing client certificate or a wrong token
stops the start with a message naming the setting to check; no secret reaches the logs."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netsonde.common.service import wait_for
from netsonde.common.testing import find_nats_server, free_port
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService

TOKEN = "bus-token-" + "t" * 24
Key = ec.EllipticCurvePrivateKey


def _certificate(subject: str, key: Key, issuer: tuple[Key, x509.Certificate] | None,
                 usage: x509.ObjectIdentifier | None) -> x509.Certificate:
    """A certificate valid for a day: a self-signed CA when `issuer` is None, else a leaf signed by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .issuer_name(issuer[1].subject if issuer else name)
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer[0] if issuer else key, hashes.SHA256())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Key | None = None) -> None:
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (directory / f"{stem}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """ca.pem signs server.pem (127.0.0.1) and client.pem; other-ca.pem signs nothing we use."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("netsonde test CA", ca_key, None, None)
    _write(tmp_path, "ca", ca)
    _write(tmp_path, "other-ca", _certificate("another CA", ec.generate_private_key(ec.SECP256R1()), None, None))
    for stem, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(tmp_path, stem, _certificate(f"netsonde {stem}", key, (ca_key, ca), usage), key)
    return tmp_path


def _nats_server(directory: Path, settings: str) -> Iterator[str]:
    """A real nats-server (JetStream) on a free port with `settings` added to its config file."""
    port = free_port()
    conf = directory / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{directory / "js"}" }}\n{settings}\n')
    log_path = directory / "nats.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([find_nats_server(), "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while "Server is ready" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def nats_mutual_tls(pki: Path) -> Iterator[str]:
    """TLS required, and client certificates verified against ca.pem (mutual TLS)."""
    yield from _nats_server(pki, f'tls {{ cert_file: "{pki}/server.pem", key_file: "{pki}/server-key.pem", '
                                 f'ca_file: "{pki}/ca.pem", verify: true, timeout: 2 }}')


@pytest.fixture
def nats_with_token(tmp_path: Path) -> Iterator[str]:
    yield from _nats_server(tmp_path, f'authorization {{ token: "{TOKEN}" }}')


async def _topology_goes_through(url: str, prefix: str, settings: dict[str, Any], **client: Any) -> None:
    """graph-builder and query-api started with `settings`; a topology message published on the bus (a client
    connected with `client`) reaches the query-api's replica and answers a Gremlin query."""
    gb = GraphBuilderService(GraphBuilderConfig.load(env={}, subject_prefix=prefix, history=False, **settings))
    api = QueryApiService(QueryApiConfig.load(env={}, subject_prefix=prefix, http_port=free_port(), history=False,
                                              flows=False, **settings))
    await gb.start()
    try:
        await api.start()
        nc = await nats.connect(url, allow_reconnect=False, **client)
        await nc.publish(f"{prefix}.topology.h1", msgpack.packb({
            "v": 1, "host": "h1", "kind": "full", "boot": "b", "seq": 0, "ts": 0,
            "nodes": [{"ID": "h", "Metadata": {"Name": "h1", "Type": "host"}},
                      {"ID": "e", "Metadata": {"Name": "eth0", "Type": "device"}}], "edges": []}))
        await nc.close()
        assert await wait_for(lambda: "e" in api.replica.graph.nodes, 10)  # probe -> graph-builder -> query-api
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.http_port}") as http:
            r = await http.post("/api/topology", json={"GremlinQuery": "G.V().Count()"})
            assert r.status_code == 200 and r.json() == 2, r.text
    finally:
        await api.stop()
        await gb.stop()


async def _start_fails(prefix: str, settings: dict[str, Any]) -> str:
    """Start a graph-builder with `settings`; it must stop within seconds, and the error's text is returned."""
    gb = GraphBuilderService(GraphBuilderConfig.load(env={}, subject_prefix=prefix, history=False, **settings))
    started = time.monotonic()
    with pytest.raises(PermissionError) as refused:
        await gb.start()
    await gb.stop()
    assert time.monotonic() - started < 10
    return str(refused.value)


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


async def test_services_use_mutual_tls_to_nats(nats_mutual_tls: str, pki: Path, unique: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tls = {"nats_url": nats_mutual_tls, "nats_tls_ca": f"{pki}/ca.pem", "nats_tls_cert": f"{pki}/client.pem",
           "nats_tls_key": f"{pki}/client-key.pem"}
    client_ctx = ssl.create_default_context(cafile=f"{pki}/ca.pem")
    client_ctx.load_cert_chain(f"{pki}/client.pem", f"{pki}/client-key.pem")
    # the server does require TLS with a client certificate: a plain client and a certificate-less one fail
    with pytest.raises(Exception):
        await nats.connect(nats_mutual_tls, allow_reconnect=False, connect_timeout=3)
    await _topology_goes_through(nats_mutual_tls, f"t{unique}", tls, tls=client_ctx)

    wrong_ca = await _start_fails(f"t{unique}", {**tls, "nats_tls_ca": f"{pki}/other-ca.pem"})
    no_client_cert = await _start_fails(f"t{unique}", {**tls, "nats_tls_cert": "", "nats_tls_key": ""})
    print(f"\nwrong CA: {wrong_ca}\nno client certificate: {no_client_cert}")
    assert "server's TLS certificate is not trusted" in wrong_ca and "nats_tls_ca" in wrong_ca
    assert "refused this client's TLS certificate" in no_client_cert and "nats_tls_cert" in no_client_cert
    key_pem = (pki / "client-key.pem").read_text()
    body = "".join(key_pem.splitlines()[1:-1])
    assert body[:40] not in _logged(caplog)  # the private key never reaches the logs


async def test_services_use_a_nats_token(nats_with_token: str, unique: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception, match="[Aa]uthorization"):  # the server does require it
        await nats.connect(nats_with_token, allow_reconnect=False, connect_timeout=3)
    settings = {"nats_url": nats_with_token, "nats_token": TOKEN}
    await _topology_goes_through(nats_with_token, f"k{unique}", settings, token=TOKEN)
    wrong = await _start_fails(f"k{unique}", {**settings, "nats_token": "not-the-token"})
    print(f"\nwrong token: {wrong}")
    assert "Authorization Violation" in wrong and "nats_token" in wrong
    logged = _logged(caplog)
    assert TOKEN not in logged and "not-the-token" not in logged
