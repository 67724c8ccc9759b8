"""query-api's web UI serving: the page shell names the hashed bundle and revalidates (ETag), the bundle is
cached as immutable, unsafe names are refused, and a missing bundle is a 503 page that says how to build it."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from netsonde.query_api.ui import WebUi


async def client_for(directory: Path) -> TestClient:
    app = web.Application()
    WebUi(directory).register(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_page_and_hashed_assets(tmp_path: Path) -> None:
    (tmp_path / "app-ABC123.js").write_text("console.log(1)")
    (tmp_path / "app-DEF456.css").write_text("body{}")
    (tmp_path / "manifest.json").write_text(json.dumps({"js": "app-ABC123.js", "css": "app-DEF456.css"}))
    client = await client_for(tmp_path)
    try:
        r = await client.get("/")
        html = await r.text()
        assert r.status == 200 and r.headers["Cache-Control"] == "no-cache"
        assert '<script src="/ui/app-ABC123.js">' in html and 'href="/ui/app-DEF456.css"' in html
        etag = r.headers["ETag"]
        again = await client.get("/", headers={"If-None-Match": etag})
        assert again.status == 304
        js = await client.get("/ui/app-ABC123.js")
        assert js.status == 200 and await js.text() == "console.log(1)"
        assert js.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert (await client.get("/ui/manifest.json")).status == 404  # only .js/.css/.map assets
        assert (await client.get("/ui/..%2Fmanifest.json")).status == 404
        assert (await client.get("/ui/app-MISSING.js")).status == 404
    finally:
        await client.close()


async def test_missing_bundle_is_a_503_page_saying_how_to_build_it(tmp_path: Path) -> None:
    client = await client_for(tmp_path / "absent")
    try:
        r = await client.get("/")
        text = await r.text()
        assert r.status == 503 and r.content_type == "text/html"
        assert "make ui" in text and "not built" in text
    finally:
        await client.close()
