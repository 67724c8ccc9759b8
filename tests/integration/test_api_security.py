"""query-api's defences: request body limits (413 before the body is read whole), authentication and roles,
TLS, and secrets kept out of the logs. Real NATS, a real graph-builder, HTTP over real sockets."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from pathlib import Path

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


async def test_the_web_page_renders_graph_strings_as_text(nats_url: str, graph_builder: str) -> None:
    """index.html in headless Chromium, fed by a real query-api whose graph holds a node named XSS."""
    from playwright.async_api import async_playwright

    api = await start_api(nats_url, graph_builder)
    try:
        base = f"http://127.0.0.1:{api.http_port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = await browser.new_page()
            # the page under test is static/index.html; everything else (API, WebSocket) is the real server
            await page.route(f"{base}/", lambda route: route.fulfill(body=INDEX_HTML.read_text(),
                                                                     content_type="text/html"))
            await page.goto(f"{base}/")
            await page.wait_for_selector("td")
            cells = await page.eval_on_selector_all("td", "tds => tds.map(td => td.textContent)")
            images = await page.eval_on_selector_all("img", "imgs => imgs.length")
            ran = await page.evaluate("window.__xss === 1")
            await browser.close()
    finally:
        await api.stop()
    print(f"\ncells: {cells}; <img> elements: {images}; script ran: {ran}")
    assert XSS in cells and cells.count(XSS) == 2  # the name and the IP column, shown as text
    assert images == 0 and ran is False
