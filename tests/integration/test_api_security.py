"""query-api's defences: request body limits (413 before the body is read whole), authentication and roles,
TLS, and secrets kept out of the logs. Real NATS, a real graph-builder, HTTP over real sockets."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import logging
import select
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import msgpack
import nats
import pytest

import netsonde.query_api

from netsonde.common.service import wait_for
from netsonde.common.testing import free_port
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService

MiB = 1024 * 1024
XSS = '<img src=x onerror="window.__xss=1">'
"""A namespace name that runs script if a page inserts it as HTML."""
INDEX_HTML = Path(netsonde.query_api.__file__).parent / "static" / "index.html"


@pytest.fixture
async def graph_builder(nats_url: str, unique: str):
    prefix = f"s{unique}"
    gb = GraphBuilderService(GraphBuilderConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix,
                                                     history=False))
    await gb.start()
    nc = await nats.connect(nats_url)
    await nc.publish(f"{prefix}.topology.h1", msgpack.packb({
        "v": 1, "host": "h1", "kind": "full", "boot": "b", "seq": 0, "ts": 0,
        "nodes": [{"ID": "h", "Metadata": {"Name": "h1", "Type": "host"}},
                  {"ID": "x", "Metadata": {"Name": XSS, "Type": "netns", "IPV4": [XSS]}}], "edges": []}))
    assert await wait_for(lambda: "h" in gb.builder.graph.nodes, 5)
    yield prefix
    await nc.close()
    await gb.stop()


async def start_api(nats_url: str, prefix: str, **settings) -> QueryApiService:
    api = QueryApiService(QueryApiConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix,
                                              http_port=free_port(), history=False, flows=False, **settings))
    await api.start()
    assert await wait_for(lambda: "h" in api.replica.graph.nodes, 5)
    return api


def _post_raw(port: int, path: str, total: int, chunked: bool) -> tuple[bytes, int]:
    """POST `total` bytes of body, 64 KiB at a time, stopping as soon as the server answers or closes.
    Returns (the server's answer, body bytes sent before it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    sock.sendall(head.encode())
    chunk, sent, answer = b"x" * 65536, 0, b""
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered (or closed) before the whole body was sent
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
            if b"\r\n\r\n" in answer:
                break
    except (BrokenPipeError, ConnectionResetError):
        try:
            answer += sock.recv(65536)
        except OSError:
            pass
    finally:
        sock.close()
    return answer, sent


def _status(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode()


async def test_a_50_mib_body_gets_413_before_it_is_read(nats_url: str, graph_builder: str) -> None:
    api = await start_api(nats_url, graph_builder)
    try:
        port = api.http_port
        # declared length: refused from the headers, before a byte of the body is read
        answer, sent = await asyncio.to_thread(_post_raw, port, "/api/topology", 50 * MiB, False)
        print(f"\nContent-Length 50 MiB: {_status(answer)} after {sent / MiB:.2f} MiB sent")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"max_body_bytes" in answer and sent < 50 * MiB
        # chunked (no length): refused once the bytes received pass the limit (1 MiB by default)
        answer, sent = await asyncio.to_thread(_post_raw, port, "/api/topology", 50 * MiB, True)
        print(f"chunked 50 MiB: {_status(answer)} after {sent / MiB:.2f} MiB sent")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 10 * MiB  # the rest was never read (the socket buffers hold a few MiB at most)
        # the file route has its own, larger limit: 2 MiB is within it (a 400 for a non-pcap body)...
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            r = await http.post("/api/pcap", content=b"\0" * (2 * MiB))
            assert r.status_code == 400 and "pcap" in r.text
            r = await http.post("/api/topology", json={"GremlinQuery": "G.V().Count()"})
            assert r.status_code == 200 and r.json() == 2
            metrics = (await http.get("/metrics")).text
        # ...and 50 MiB is not
        answer, sent = await asyncio.to_thread(_post_raw, port, "/api/pcap", 50 * MiB, False)
        assert answer.startswith(b"HTTP/1.1 413") and b"max_pcap_bytes" in answer
        assert 'query_api_body_too_large_total{route="/api/topology"} 2.0' in metrics, metrics
    finally:
        await api.stop()


async def test_the_web_pages_render_graph_strings_as_text(nats_url: str, graph_builder: str) -> None:
    """The web UI served at `/` (the built bundle) and the older static/index.html, in headless Chromium, fed by
    a real query-api whose graph holds a namespace named XSS: the name shows as text, no script runs."""
    from playwright.async_api import async_playwright

    api = await start_api(nats_url, graph_builder)
    seen: dict[str, tuple[bool, int, bool]] = {}
    try:
        base = f"http://127.0.0.1:{api.http_port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            for name, path in (("served UI", "/"), ("index.html", "/index-under-test.html")):
                page = await browser.new_page()
                # index.html is no longer served: the test serves it itself; the API and WebSocket are real
                await page.route(f"{base}/index-under-test.html", lambda route: route.fulfill(
                    body=INDEX_HTML.read_text(), content_type="text/html"))
                await page.goto(f"{base}{path}")
                try:
                    await page.wait_for_function("t => document.body.innerText.includes(t)", arg=XSS,
                                                 timeout=15_000)
                except Exception:
                    pass  # reported below: the name must show as text
                await page.wait_for_timeout(500)
                shown = XSS in await page.evaluate("document.body.innerText")
                images = await page.evaluate("document.querySelectorAll('img[src=\"x\"]').length")
                ran = await page.evaluate("window.__xss === 1")
                seen[name] = (shown, images, ran)
                await page.close()
            await browser.close()
    finally:
        await api.stop()
    print(f"\n(name shown as text, <img src=x> elements, script ran): {seen}")
    assert seen == {"served UI": (True, 0, False), "index.html": (True, 0, False)}


# --- authentication, roles, TLS ------------------------------------------------------------------------------
ADMIN_PW, READER_PW = "s3cret-admin-Pw!", "s3cret-reader-Pw!"
READER_TOKEN = "reader-token-" + "q" * 30


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    from netsonde.query_api.auth import hash_password

    path = tmp_path / "users.toml"
    path.write_text(
        f'[users.alice]\npassword = "{hash_password(ADMIN_PW)}"\nrole = "admin"\n'
        f'[users.bob]\npassword = "{hash_password(READER_PW)}"\nrole = "reader"\n'
        f'[tokens.grafana]\nsha256 = "{hashlib.sha256(READER_TOKEN.encode()).hexdigest()}"\nrole = "reader"\n')
    return str(path)


def _self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made here with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netsonde-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_auth_is_on_off_loopback_and_roles_hold(nats_url: str, graph_builder: str, users_file: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from skydive.rest.client import BadRequest, RESTClient

    caplog.set_level(logging.DEBUG)
    # listening on every address, no auth setting: authentication is on
    api = await start_api(nats_url, graph_builder, http_host="0.0.0.0", users_file=users_file)
    try:
        base = f"http://127.0.0.1:{api.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for method, path in [("GET", "/api/status"), ("POST", "/api/topology"), ("GET", "/api/node"),
                                 ("POST", "/api/capture"), ("GET", "/ws/subscriber"), ("GET", "/")]:
                r = await http.request(method, path, json={"GremlinQuery": "G.V()"})
                assert r.status_code == 401, (method, path, r.status_code)
            assert (await http.get("/healthz")).status_code == 200
            r = await http.post("/login", data={"username": "alice", "password": "wrong"})
            assert r.status_code == 401
            # an unauthenticated 50 MiB body: refused from the headers
            answer, sent = await asyncio.to_thread(_post_raw, api.http_port, "/api/topology", 50 * MiB, False)
            assert answer.startswith(b"HTTP/1.1 401")

            reader = {"Authorization": f"Bearer {READER_TOKEN}"}
            r = await http.post("/api/topology", json={"GremlinQuery": "G.V().Count()"}, headers=reader)
            assert r.status_code == 200 and r.json() == 2
            assert (await http.get("/api/status", headers=reader)).status_code == 200
            forbidden = [("POST", "/api/capture", {"GremlinQuery": "G.V()"}), ("DELETE", "/api/capture/x", None),
                         ("POST", "/api/node", {"Metadata": {"Name": "n", "Type": "device"}}),
                         ("DELETE", "/api/node/x", None), ("POST", "/api/noderule", {"Action": "create"}),
                         ("POST", "/api/edgerule", {}), ("POST", "/api/pcap", None),
                         ("POST", "/api/injectpacket", {"Src": "G.V()"})]
            for method, path, body in forbidden:
                r = await http.request(method, path, json=body, headers=reader)
                assert r.status_code == 403, (method, path, r.status_code, r.text)
            # an admin's browser credentials sent along with another site's form are refused
            basic = {"Authorization": "Basic " + base64.b64encode(f"alice:{ADMIN_PW}".encode()).decode()}
            r = await http.post("/api/capture", content=b'{"GremlinQuery": "G.V()"}',
                                headers={**basic, "Origin": "http://evil.example", "Content-Type": "text/plain"})
            assert r.status_code == 403 and "cross-site" in r.text
            r = await http.get("/api/capture", headers={**basic, "Origin": "http://evil.example"})
            assert r.status_code == 200  # reading is not changed by it
            r = await http.get("/ws/subscriber", headers={**basic, "Origin": "http://evil.example", "Upgrade":
                                                          "websocket", "Connection": "Upgrade",
                                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                          "Sec-WebSocket-Version": "13"})
            assert r.status_code == 403  # nor may another site's page subscribe with them
            # the WebSocket: a reader may subscribe, nobody without credentials
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{base}/ws/subscriber", headers=reader) as ws:
                    await ws.send_json({"Namespace": "Graph", "Type": "SyncRequest", "Obj": {}})
                    reply = await ws.receive_json(timeout=10)
                    assert reply["Type"] == "SyncReply" and len(reply["Obj"]["Nodes"]) == 2
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(f"{base}/ws/subscriber")
                assert refused.value.status == 401

        # skydive-client, as Skydive users call it: POST /login, then the session cookie
        def skydive_calls() -> tuple[int, str, str]:
            admin = RESTClient(f"127.0.0.1:{api.http_port}", username="alice", password=ADMIN_PW)
            nodes = admin.lookup_nodes("G.V().Has('Type','host')")
            capture = admin.capture_create("G.V().Has('Name','h1')", name="auth-test")
            admin.capture_delete(capture.uuid)
            reader_client = RESTClient(f"127.0.0.1:{api.http_port}", username="bob", password=READER_PW)
            assert reader_client.lookup("G.V().Count()") == 2
            try:
                reader_client.capture_create("G.V().Has('Name','h1')")
                refused = "created"
            except BadRequest as exc:
                refused = str(exc)
            return len(nodes), capture.uuid, refused

        count, uuid, refused = await asyncio.to_thread(skydive_calls)
        assert count == 1 and uuid and "admin role" in refused and "'bob' is a reader" in refused
        metrics = await asyncio.to_thread(lambda: httpx.get(f"http://127.0.0.1:{api.http_port}/metrics").text)
        assert 'query_api_auth_failures_total{reason="bad_login"} 1.0' in metrics
        assert 'query_api_auth_failures_total{reason="forbidden"} 9.0' in metrics
        assert 'query_api_auth_failures_total{reason="cross_site"} 2.0' in metrics
    finally:
        await api.stop()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "login" in logged.lower()  # the log was captured at all
    for secret in (ADMIN_PW, READER_PW, READER_TOKEN, "wrong"):
        assert secret not in logged, f"{secret!r} appears in the log"


async def test_auth_defaults_and_the_operator_switch(nats_url: str, graph_builder: str, users_file: str) -> None:
    from netsonde.query_api.auth import AuthConfigError

    api = await start_api(nats_url, graph_builder)  # 127.0.0.1 (make allinone): no authentication
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.http_port}") as http:
            assert (await http.get("/api/status")).status_code == 200
    finally:
        await api.stop()
    api = await start_api(nats_url, graph_builder, auth="on", users_file=users_file)  # the operator turns it on
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.http_port}") as http:
            assert (await http.get("/api/status")).status_code == 401
            login = await http.post("/login", data={"username": "bob", "password": READER_PW})
            assert login.status_code == 200 and "authtok" in login.cookies
            assert (await http.get("/api/status")).status_code == 200  # the session cookie
    finally:
        await api.stop()
    with pytest.raises(AuthConfigError, match="users_file"):  # on without users: refused at start, not open
        QueryApiService(QueryApiConfig.load(env={}, http_host="0.0.0.0", subject_prefix=graph_builder))


async def test_tls_for_the_api_and_the_websocket(nats_url: str, graph_builder: str, users_file: str,
                                                 tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    api = await start_api(nats_url, graph_builder, tls_cert=cert, tls_key=key, auth="on", users_file=users_file)
    try:
        trust = ssl.create_default_context(cafile=cert)
        base = f"https://127.0.0.1:{api.http_port}"
        async with httpx.AsyncClient(base_url=base, verify=trust) as https:
            r = await https.post("/api/topology", json={"GremlinQuery": "G.V().Count()"},
                                 headers={"Authorization": f"Bearer {READER_TOKEN}"})
            assert r.status_code == 200 and r.json() == 2 and r.url.scheme == "https"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"wss://127.0.0.1:{api.http_port}/ws/subscriber", ssl=trust,
                                          headers={"Authorization": f"Bearer {READER_TOKEN}"}) as ws:
                await ws.send_json({"Namespace": "Graph", "Type": "SyncRequest", "Obj": {}})
                assert (await ws.receive_json(timeout=10))["Type"] == "SyncReply"
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets nowhere
            async with httpx.AsyncClient() as plain:
                await plain.get(f"http://127.0.0.1:{api.http_port}/api/status", timeout=5)
    finally:
        await api.stop()


# --- the bus: NATS with authentication ------------------------------------------------------------------------
NATS_PW = "bus-Pa55word-xyz"


@pytest.fixture
def nats_with_auth(tmp_path: Path):
    """A real nats-server (JetStream) whose config file requires a user and password."""
    from netsonde.common.testing import find_nats_server

    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
                    f'authorization {{ user: netsonde, password: "{NATS_PW}" }}\n')
    log_path = tmp_path / "nats.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([find_nats_server(), "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while "Server is ready" not in log_path.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


async def test_services_authenticate_to_nats(nats_with_auth: str, unique: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    creds = {"nats_url": nats_with_auth, "nats_user": "netsonde", "nats_password": NATS_PW}
    with pytest.raises(Exception, match="[Aa]uthorization"):  # the server does require it
        await nats.connect(nats_with_auth, allow_reconnect=False, connect_timeout=3)
    gb = GraphBuilderService(GraphBuilderConfig.load(env={}, subject_prefix=f"n{unique}", history=False, **creds))
    await gb.start()
    api = QueryApiService(QueryApiConfig.load(env={}, subject_prefix=f"n{unique}", http_port=free_port(),
                                              history=False, flows=False, **creds))
    try:
        await api.start()
        nc = await nats.connect(nats_with_auth, user="netsonde", password=NATS_PW)
        await nc.publish(f"n{unique}.topology.h1", msgpack.packb({
            "v": 1, "host": "h1", "kind": "full", "boot": "b", "seq": 0, "ts": 0,
            "nodes": [{"ID": "h", "Metadata": {"Name": "h1", "Type": "host"}}], "edges": []}))
        await nc.close()
        assert await wait_for(lambda: "h" in api.replica.graph.nodes, 10)  # probe -> graph-builder -> query-api
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.http_port}") as http:
            r = await http.post("/api/topology", json={"GremlinQuery": "G.V().Has('Name','h1').Count()"})
            assert r.json() == 1
    finally:
        await api.stop()
        await gb.stop()
    wrong = QueryApiService(QueryApiConfig.load(env={}, subject_prefix=f"n{unique}", http_port=free_port(),
                                                **{**creds, "nats_password": "not-it"}))
    with pytest.raises(Exception, match="[Aa]uthorization"):
        await wrong.start()
    await wrong.stop()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert NATS_PW not in logged and "not-it" not in logged


@pytest.mark.slow
async def test_clickhouse_user_and_password_reach_clickhouse_connect(tmp_path: Path) -> None:
    """The embedded store started to require a password; a service's clickhouse_user/clickhouse_password
    settings reach clickhouse-connect (through the URL every service connects with)."""
    import urllib.request

    from netsonde.common.clickhouse import connect

    port, password = free_port(), "ch-Pa55:w/rd@x"
    log_path = tmp_path / "store.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "netsonde.clickhouse_store", "--data-dir", str(tmp_path / "data"),
                                 "--port", str(port), "--user", "netsonde", "--password", password],
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        cfg = QueryApiConfig.load(env={"NETSONDE_CLICKHOUSE_URL": f"http://127.0.0.1:{port}",
                                       "NETSONDE_CLICKHOUSE_USER": "netsonde",
                                       "NETSONDE_CLICKHOUSE_PASSWORD": password})
        client = await asyncio.to_thread(connect, cfg.clickhouse_url, "default")
        assert (await asyncio.to_thread(client.query, "SELECT 41 + 1")).result_rows == [(42,)]
        client.close()
        bad = QueryApiConfig.load(env={"NETSONDE_CLICKHOUSE_URL": f"http://127.0.0.1:{port}",
                                       "NETSONDE_CLICKHOUSE_USER": "netsonde",
                                       "NETSONDE_CLICKHOUSE_PASSWORD": "wrong"})
        with pytest.raises(Exception, match="(?i)password|authenticat"):
            await asyncio.to_thread(lambda: connect(bad.clickhouse_url, "default").query("SELECT 1"))
    finally:
        proc.terminate()
        proc.wait(20)
