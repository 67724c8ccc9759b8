"""The `sflow` capture: a UDP listener for an external sFlow agent, whose samples become flows of the selected
node (Skydive's `flow/probes/sflow` + `sflow/agent.go`: one listener and one flow table per capture and node).

The listener binds in the node's network namespace, to the node's IPv4 address when it has exactly one (as
Skydive does) and to 0.0.0.0 otherwise, on the capture's `Port`, or on a free port when `Port` is 0 (Skydive
defaults to 6343, which the ovs-sflow-collector usually holds on the same host). The address is shown in the
node's `Captures[].SFlowSocket`. Datagrams go through the shared sFlow code (`netsonde.flow.sflow`: C scanner,
then `SFlowCollector` into the capture's FlowTable), so every flow has `NodeTID` = the node's TID, both
directions of a conversation in one flow, counts scaled by the agent's sampling rate and `SamplingRate` set.
`PacketsReceived` counts the flow samples taken, `PacketsDropped` the datagrams the agent sent that never
arrived (gaps in its sequence numbers: network or socket-queue losses). Malformed datagrams are dropped and
counted (`datagrams_dropped`, logged once per reason); counter samples of the external agent are counted
(`counter_samples`) but not published.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from typing import Any

from netsonde.common.bus.flows import Flow
from netsonde.flow.capture import BaseCapture
from netsonde.flow.sflow.collector import PortInfo, SFlowCollector, recv_available
from netsonde.flow.table import FlowTable

__all__ = ["SFlowSocketCapture", "SampledFlows", "listen_address"]

PROCESS_INTERVAL_S = 0.2
"""How often pending samples go through the flow table (they are folded per header until then)."""
RCVBUF_BYTES = 8 << 20


def listen_address(node: dict[str, Any]) -> str:
    """The node's IPv4 address when it has exactly one (Skydive's rule), else every address."""
    addrs = node.get("Metadata", {}).get("IPV4") or []
    if isinstance(addrs, list) and len(addrs) == 1:
        return str(addrs[0]).split("/")[0]
    return "0.0.0.0"


class SampledFlows:
    """What the controller reads as the capture's table: the FlowTable's updates, with pending samples run
    through it first and `SamplingRate` set. Call with the capture's lock held, like a FlowTable."""

    def __init__(self, collector: SFlowCollector, table: FlowTable) -> None:
        self.collector = collector
        self.table = table

    @property
    def stats(self) -> Any:
        return self.table.stats

    def __len__(self) -> int:
        return len(self.table)

    def updates(self, now_ms: int) -> list[Flow]:
        self.collector.process(now_ms)
        return self.collector.updates(now_ms)

    def flush(self) -> list[Flow]:
        self.collector.process(int(time.time() * 1000))
        return self.collector.drop_capture(self.table.capture_id)


class SFlowSocketCapture(BaseCapture):
    """A UDP socket taking sFlow datagrams into the node's FlowTable; `sflow_socket` is where it listens."""

    kind = "sflow"

    def __init__(
        self,
        name: str,
        table: FlowTable,
        netns_path: str | None = None,
        address: str = "0.0.0.0",
        port: int = 0,
    ) -> None:
        super().__init__(name, table, netns_path)
        self.bind = (address, port)
        info = PortInfo(table.node_tid, table.capture_id, name)
        self.collector = SFlowCollector(
            lambda agent, if_index: info,
            layer_key_mode="L2" if table.l2_mode else "L3",
            expire_ms=table.expire_ms,
            max_entries=table.max_entries,
            max_tables=1,
        )
        # every sample goes to the node's table
        self.collector.tables[(table.node_tid, table.capture_id)] = table
        self.flows = SampledFlows(self.collector, table)
        self.sock: socket.socket | None = None
        self.sflow_socket = ""
        """host:port the agent sends to ("" until listening)."""

    # --- counters the controller and /healthz read ------------------------------------------------------
    @property
    def datagrams(self) -> int:
        return sum(s.datagrams for s in self.collector.stats.values())

    @property
    def datagrams_dropped(self) -> int:
        return sum(sum(s.errors.values()) for s in self.collector.stats.values())

    @property
    def counter_samples(self) -> int:
        return sum(s.counter_samples for s in self.collector.stats.values())

    # --- the thread ---------------------------------------------------------------------------------------
    def _open(self) -> None:
        s = socket.socket(socket.AF_INET6 if ":" in self.bind[0] else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            s.bind(self.bind)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"sflow listener on {self.bind[0]}:{self.bind[1]}: {e.strerror}") from None
        self.sock = s
        host, port = s.getsockname()[:2]
        self.sflow_socket = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _run(self) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        next_process = time.monotonic() + PROCESS_INTERVAL_S
        while not self._stop.is_set():
            if poller.poll(200):
                with self.lock:
                    self._read(fd)
            if time.monotonic() >= next_process:
                next_process = time.monotonic() + PROCESS_INTERVAL_S
                with self.lock:
                    self.collector.process(int(time.time() * 1000))
                    self.collector.counters()  # external agent's interface counters: counted, not kept
                    stats = self.collector.stats.values()
                    self.packets_received = sum(s.flow_samples for s in stats)
                    self.packets_dropped = sum(s.lost for s in stats)

    def _read(self, fd: int) -> None:
        now = int(time.time() * 1000)
        try:
            if recv_available:
                self.collector.feed_socket(fd, now, 512)
                return
            assert self.sock is not None  # without the C extension: one datagram at a time
            for _ in range(512):
                data, addr = self.sock.recvfrom(65535)
                self.collector.feed(data, addr[0], now)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:  # e.g. an ICMP error reported on the socket: never fatal
            if e.errno != errno.ECONNREFUSED:
                raise

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
