"""`make demo-screenshot`: the README's picture of the web UI, taken from a running `make allinone` + `make demo`.

Opens the UI in headless Chromium (Debian's `chromium`, driven by Playwright), collapses the groups named by
`--collapse` (the local host by default, so that only the demo's two hosts and their tunnel are drawn open),
selects the node `--select` (host-a's `vm1-eth0`, which carries the demo's capture and its ping flow) so that its
panel shows metadata, captures and flows, and writes a PNG.

    python -m netsonde.cli.screenshot [--analyzer 127.0.0.1:8082] [--output docs/img/ui-map.png]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

CHROMIUM = "/usr/bin/chromium"


def take(analyzer: str, output: str, select: str, select_host: str, collapse: list[str]) -> None:
    from playwright.sync_api import sync_playwright  # a dev/test dependency: imported only here

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(f"http://{analyzer}/")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            for host in collapse:
                page.evaluate(
                    """h => { const m = window.netsonde.map;
                         for (const [id, g] of m.groups) if (g.type === 'host' && g.name === h) m.collapse(id); }""",
                    host,
                )
            node_id = page.evaluate(
                """([n, h]) => { const x = window.netsonde.map.cy.nodes().filter(
                       e => e.data('name') === n && e.data('host') === h)[0]; return x ? x.id() : ''; }""",
                [select, select_host],
            )
            if node_id:
                page.evaluate("id => window.netsonde.map.cy.getElementById(id).emit('tap')", node_id)
                page.locator("#pane-node table.metadata").wait_for(timeout=10_000)
                row = page.locator('[data-section="flows"] table.flows tbody tr', has_text="ICMPv4").first
                row.wait_for(timeout=20_000)
                row.click()  # its path drawn on the map
            else:
                print(f"screenshot: no node {select!r} on {select_host!r}; the panel stays empty", file=sys.stderr)
            try:  # the panel's metrics and the flow's path load in the background
                page.wait_for_function("!document.querySelector('#panel').innerText.includes('loading')",
                                       timeout=15_000)
            except Exception:
                print("screenshot: the panel was still loading", file=sys.stderr)
            # the panel scrolled to the node's captures, then its flows
            page.evaluate("document.querySelector('section[aria-label=\"Captures on this node\"]')?.scrollIntoView()")
            page.mouse.move(0, 0)
            page.wait_for_timeout(500)
            page.screenshot(path=output)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netsonde.cli.screenshot", description=__doc__.split("\n")[0])
    p.add_argument("--analyzer", default=os.environ.get("NETSONDE_ANALYZER", "127.0.0.1:8082"))
    p.add_argument("--output", default="docs/img/ui-map.png")
    p.add_argument("--select", default="vm1-eth0", help="name of the node whose panel is shown")
    p.add_argument("--select-host", default="host-a")
    p.add_argument("--collapse", nargs="*", default=[socket.gethostname()], help="host groups drawn collapsed")
    args = p.parse_args(argv)
    take(args.analyzer, args.output, args.select, args.select_host, args.collapse)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
