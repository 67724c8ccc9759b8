"""The click command line: every older flag still parses, shell completion answers, tables are built from the
API's JSON shapes (the commands against a running stack: tests/integration/test_cli_client.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from netsonde.cli import output
from netsonde.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [
    ["client", "--analyzer", "h:1", "topology", "query", "--gremlin", "G.V()", "--output", "pcap"],
    ["client", "topology", "query", "-q", "G.V()", "--format", "table"],
    ["client", "-o", "yaml", "status"],
    ["client", "capture", "create", "--gremlin", "G.V()", "--type", "pcap", "--bpf", "icmp", "--header-size", "64",
     "--layer-key-mode", "L3", "--extra-tcp-metric", "--ndpi", "--ip-defrag", "--reassamble-tcp",
     "--extra-layer", "DNS", "--extra-layer", "VRRP", "--target", "h:2055", "--target-type", "netflowv5"],
    ["client", "capture", "delete", "abc"],
    ["client", "diff", "--from", "-5m", "--to", "now", "--scope", "G.V()", "--no-flows", "--json"],
    ["client", "path", "t1", "--settle", "5s", "--json"],
    ["client", "loss", "--window", "1m"],
    ["client", "alert", "create", "--expression", "G.V()", "--trigger", "periodic:10s", "--action", "http://x"],
    ["client", "pcap", str(ROOT / "tests/data/eth-ip4-arp-dns-req-http-google.pcap"), "--replay", "--node-tid", "x"],
    ["allinone", "--state-dir", "/tmp/x", "--api-port", "1", "--only", "query-api"],
    ["config", "graph-builder"],
])
def test_command_lines_parse(argv: list[str]) -> None:
    build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["client", "topology", "query"],                       # no query
    ["client", "--format", "xml", "status"],                # unknown format
    ["client", "capture", "create", "--gremlin", "G.V()", "--layer-key-mode", "L4"],
    ["client", "nope"],
])
def test_refused_command_lines(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_shell_completion() -> None:
    env = {**os.environ, "_NETSONDE_COMPLETE": "bash_complete", "COMP_WORDS": "netsonde client --format ",
           "COMP_CWORD": "3"}
    out = subprocess.run([str(ROOT / ".venv/bin/netsonde")], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["plain,json", "plain,yaml", "plain,table"]
    env.update(COMP_WORDS="netsonde client topology qu", COMP_CWORD="3")
    out = subprocess.run([str(ROOT / ".venv/bin/netsonde")], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["plain,query"]


def _render(data: object) -> list[list[str]]:
    console = Console(width=200, record=True)
    console.print(output.table(data))
    lines = console.export_text().splitlines()
    return [line.replace("│", " ").replace("┃", " ").split() for line in lines if "━" not in line and "─" not in line]


def test_tables_of_api_shapes() -> None:
    captures = {"u1": {"GremlinQuery": "G.V()", "Type": "pcap"}, "u2": {"GremlinQuery": "G.E()", "Type": ""}}
    assert [r for r in _render(captures) if r] == [["ID", "GremlinQuery", "Type"], ["u1", "G.V()", "pcap"],
                                                    ["u2", "G.E()"]]
    nodes = [{"ID": "n1", "Host": "h", "Metadata": {"Name": "eth0", "Type": "device"}},
             {"ID": "e1", "Host": "h", "Parent": "n1", "Child": "n2", "Metadata": {"RelationType": "layer2"}}]
    assert [r for r in _render(nodes) if r] == [["ID", "Name", "Type", "Host", "Parent", "Child", "RelationType"],
                                                 ["n1", "eth0", "device", "h"], ["e1", "h", "n1", "n2", "layer2"]]
    assert [r for r in _render([3]) if r] == [["Value"], ["3"]]
    assert [r for r in _render({"Version": "1", "Up": True}) if r] == [["Key", "Value"], ["Version", "1"],
                                                                        ["Up", "True"]]
