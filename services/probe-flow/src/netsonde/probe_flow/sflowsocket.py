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
counted (`datagrams_dropped`, logged once per reason). The agent's counter samples, summed over its
interfaces, become the node's `SFlow.Metric` / `SFlow.LastUpdateMetric`, as Skydive puts them on the capture
node (`publish_agent_counters`, on the interface-metrics subject).
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import time
from typing import Any

from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.flows import Flow
from netsonde.common.bus.metrics import InterfaceMetrics, InterfaceMetricsBatch
from netsonde.flow.capture import BaseCapture
from netsonde.flow.sflow.collector import PortInfo, SFlowCollector, recv_available
from netsonde.flow.table import FlowTable

log = logging.getLogger(__name__)

__all__ = ["SFlowSocketCapture", "SampledFlows", "listen_address", "publish_agent_counters"]

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
        self._if_counters: dict[tuple[str, int], dict[str, int]] = {}
        """(agent, ifIndex) -> the latest absolute counters of that interface."""
        self._reported: tuple[dict[str, int], int] | None = None
        """The sums last reported, and when (ms)."""
        self._counters_new = False
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

    def interface_metrics(self, now_ms: int) -> InterfaceMetrics | None:
        """The agent's interface counters summed over its interfaces (Skydive's `SFlow` of the capture node),
        with the change since the previous report (a counter that went back, e.g. an agent restart, counts
        from zero); None when no counter sample came since. Call with `lock` held."""
        if not self._counters_new:
            return None
        self._counters_new = False
        total: dict[str, int] = {}
        for values in self._if_counters.values():
            for k, v in values.items():
                total[k] = total.get(k, 0) + v
        delta: dict[str, int] = {}
        if self._reported is not None:
            prev, prev_ms = self._reported
            delta = {k: v - prev[k] if v >= prev[k] else v for k, v in total.items() if k in prev}
            delta["Start"], delta["Last"] = prev_ms, now_ms
        self._reported = (total, now_ms)
        agents = sorted({a for a, _ in self._if_counters})
        return InterfaceMetrics(
            Key="SFlow",
            Metric=total,
            LastUpdateMetric=delta,
            Last=now_ms,
            NodeTID=self.table.node_tid,
            Name=self.ifname,
            Agent=",".join(agents),
        )

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
                    for item in self.collector.counters():
                        self._if_counters[(item.Agent, item.IfIndex)] = item.Metric
                        self._counters_new = True
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


async def publish_agent_counters(nc: Any, subjects: Subjects, host: str, controller: Any, errors: Any) -> int:
    """Publish the summed counters of every running `sflow` capture of `controller` that got counter samples
    since the previous call, as one InterfaceMetricsBatch (graph-builder merges each item into its node's
    `SFlow`). A failed publish is logged and counted in `errors` (a Prometheus counter labelled by kind).
    Returns the number of items sent."""
    now = int(time.time() * 1000)
    items = []
    for rc in list(controller.running.values()):
        reader = rc.reader
        if isinstance(reader, SFlowSocketCapture):
            with reader.lock:
                item = reader.interface_metrics(now)
            if item is not None:
                items.append(item)
    if not items:
        return 0
    batch = InterfaceMetricsBatch(host=host, source="sflow", ts=now, items=items)
    try:
        await nc.publish(subjects.interface_metrics(host), encode(batch))
    except Exception as e:  # NATS down: the next counter sample brings the sums again
        errors.labels("metrics").inc()
        log.warning("could not publish sflow capture counters: %r", e)
        return 0
    return len(items)
