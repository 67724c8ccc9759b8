"""Packet injection: query-api -> the probe-flow of one host, request/reply on `<prefix>.inject.<host>`.

The request carries Skydive's PacketInjection fields (`api/types/types.go`), with `Src` narrowed by query-api
to the one node it selected (`G.V('<id>')`) and the addresses it filled in from the selected nodes; a probe can
also be given the interface directly (`Ifname`, `NetNsPath`). The reply says how many packets left, or why none
did.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class PacketInjectRequest(msgspec.Struct, omit_defaults=True):
    """Request on `Subjects.packet_inject(host)` (and the body of probe-flow's `POST /injectpacket`)."""

    VERSION: ClassVar[int] = 1
    Src: str = ""
    """Gremlin query selecting the node (on this host) to send from; or `Ifname`."""
    Ifname: str = ""
    NetNsPath: str | None = None
    """Namespace of `Ifname` (a path such as /var/run/netns/x); None: the probe's own."""
    Type: str = "icmp4"
    """icmp4, icmp6, tcp4, tcp6, udp4 or udp6."""
    SrcIP: str = ""
    DstIP: str = ""
    SrcMAC: str = ""
    DstMAC: str = ""
    SrcPort: int = 0
    DstPort: int = 0
    Count: int = 1
    Interval: int = 0
    """Milliseconds between packets."""
    Size: int = 0
    """Frame size (padded), 0: as small as the headers allow."""
    ICMPID: int = 0
    Payload: str = ""
    TTL: int = 64
    Mode: str = "unique"
    """Skydive's mode: `unique` (one flow per packet ID) or `random`."""
    IncrementPayload: int = 0
    v: int = 1

    @classmethod
    def from_json_body(cls, body: Any) -> PacketInjectRequest:
        """A Skydive PacketInjection JSON object -> request. Null fields take their default, fields this probe
        does not use (Name, Description, Dst ...) are left out, numbers written as strings are read; a field of
        the wrong type raises ValueError naming it."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON PacketInjection object")
        try:
            return msgspec.convert({k: v for k, v in body.items() if v is not None}, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"PacketInjection: {exc}") from None


class PacketInjectReply(msgspec.Struct, omit_defaults=True):
    """Reply: `sent` packets, or `error` (non-empty) when the request could not be run."""

    VERSION: ClassVar[int] = 1
    sent: int = 0
    error: str = ""
    v: int = 1
