"""Helpers shared by the flow capture tests: tshark's view of a pcap file."""

from __future__ import annotations

import subprocess
from pathlib import Path


def tshark_conversations(path: Path, proto: str) -> dict[tuple, tuple[int, int]]:
    """{sorted((ipA, portA), (ipB, portB)): (frames, bytes)} for `proto` (tcp or udp).

    Frames come from `tshark -z conv,<proto>` (summed when tshark splits a 5-tuple into several streams);
    bytes from the frame lengths of the same packets (the conversation table rounds to kB)."""
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-q", "-z", f"conv,{proto}"], check=True,
                         capture_output=True, text=True).stdout
    frames: dict[tuple, int] = {}
    for line in out.splitlines():
        tok = line.split()
        if len(tok) < 10 or tok[1] != "<->":
            continue
        (a, pa), (b, pb) = tok[0].rsplit(":", 1), tok[2].rsplit(":", 1)
        k = tuple(sorted([(a, int(pa)), (b, int(pb))]))
        frames[k] = frames.get(k, 0) + int(tok[9])
    fields = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "ip.src", "-e",
                             f"{proto}.srcport", "-e", "ip.dst", "-e", f"{proto}.dstport", "-e", "frame.len",
                             "-Y", proto], check=True, capture_output=True, text=True).stdout
    sums: dict[tuple, list[int]] = {}
    for line in fields.splitlines():
        a, pa, b, pb, ln = line.split("\t")
        k = tuple(sorted([(a, int(pa)), (b, int(pb))]))
        s = sums.setdefault(k, [0, 0])
        s[0] += 1
        s[1] += int(ln)
    assert {k: v[0] for k, v in sums.items()} == frames, "tshark's conversation table and fields disagree"
    return {k: (v[0], v[1]) for k, v in sums.items()}
