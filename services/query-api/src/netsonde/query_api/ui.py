"""Serves the web UI: the page shell at `/` and the bundle built by `make ui` under `/ui/`.

The bundle (services/query-api/ui, TypeScript bundled by esbuild) lands in `static/ui/` with a content hash in
each file name and a `manifest.json` naming them; those files are cached for a year (`immutable`), the
page shell is revalidated on every load (ETag). Without a built bundle `/` answers a 503 page saying how to
build it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).parent / "static" / "ui"
ASSET_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(js|css|map)$")

SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Netsonde</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/{css}">
<link rel="preload" href="/api/topology/summary?open=hosts" as="fetch" crossorigin="anonymous">
</head>
<body>
<div id="app"></div>
<script src="/ui/{js}"></script>
</body>
</html>
"""

MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Netsonde: web UI not built</title>
<link rel="icon" href="data:,"></head>
<body style="font: 15px system-ui, sans-serif; margin: 3em">
<h1>The web UI bundle is not built</h1>
<p>query-api serves the UI from <code>{dir}</code>, which has no <code>manifest.json</code>.</p>
<p>Build it with <code>make ui</code> (or <code>make install</code>) in the Netsonde checkout: it runs
<code>npm ci</code> and esbuild in <code>services/query-api/ui</code> (Node 20 and npm needed).</p>
<p>The API works without it: <a href="/api/status">/api/status</a>, <code>POST /api/topology</code>.</p>
</body></html>
"""


class WebUi:
    """`GET /` (the page) and `GET /ui/{name}` (hashed assets)."""

    def __init__(self, directory: Path = UI_DIR) -> None:
        self.directory = directory

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/ui/{name}", self.asset)

    def _shell(self) -> str | None:
        try:
            manifest = json.loads((self.directory / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        js, css = manifest.get("js", ""), manifest.get("css", "")
        if not (ASSET_NAME.match(js) and ASSET_NAME.match(css)) or not (self.directory / js).is_file():
            return None
        return SHELL.format(js=js, css=css)

    async def page(self, request: web.Request) -> web.Response:
        html = self._shell()
        if html is None:
            return web.Response(status=503, text=MISSING.format(dir=self.directory), content_type="text/html")
        etag = '"' + hashlib.sha1(html.encode()).hexdigest()[:16] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(text=html, content_type="text/html", headers=headers)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.directory / name
        if not ASSET_NAME.match(name) or not path.is_file():
            raise web.HTTPNotFound(text=f"no UI asset {name!r} (run `make ui` to build the bundle)")
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})
