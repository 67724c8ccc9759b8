"""The services a capture needs on one host, each a real process: graph-builder, probe-topology, query-api,
flow-enricher and probe-flow, started in that order (the API answers once the graph is there; probe-flow
last, so its first capture finds the graph and the enricher ready); and a capture created as a user does,
with the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.services import ServiceProcs

TOPOLOGY_PLAIN = {"ovsdb": "", "process_netns": "false"}
"""probe-topology without OVSDB and without walking other namespaces' processes: the default."""


def start_flow_stack(procs: ServiceProcs, *, topology: dict[str, str] | None = None,
                     graph_builder: dict[str, str] | None = None,
                     probe_flow: dict[str, str] | None = None) -> tuple[int, int]:
    """Start the five services in `procs`; returns (query-api port, probe-flow port).

    `topology` replaces TOPOLOGY_PLAIN as probe-topology's settings; `graph_builder` and `probe_flow` add to
    theirs (probe-flow sends flow updates and reconciles its captures every second)."""
    procs.start("graph_builder", **(graph_builder or {}))
    procs.start("probe_topology", **(TOPOLOGY_PLAIN if topology is None else topology))
    api = procs.start("query_api")
    procs.start("flow_enricher")
    probe = procs.start("probe_flow", **{"update_interval_s": "1", "reconcile_interval_s": "1", **(probe_flow or {})})
    return api, probe


def cli_capture_create(api: int, gremlin: str, *options: str) -> dict[str, Any]:
    """`netsonde client capture create --gremlin <gremlin> <options...>` against the query-api on port `api`;
    the capture it prints. The command must succeed."""
    out = subprocess.run([sys.executable, "-m", "netsonde.cli", "client", "--analyzer", f"127.0.0.1:{api}",
                          "capture", "create", "--gremlin", gremlin, *options],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    capture: dict[str, Any] = json.loads(out.stdout)
    return capture
