"""Subject names. The routing key (host, agent) is the last token so consumers can use wildcards."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subjects:
    prefix: str = "netsonde"

    # probe-topology -> graph-builder (core NATS)
    def topology(self, host: str) -> str:
        """TopologyMessage from the probe of `host`."""
        return f"{self.prefix}.topology.{_token(host)}"

    @property
    def topology_all(self) -> str:
        return f"{self.prefix}.topology.*"

    @property
    def topology_resync(self) -> str:
        """ResyncRequest: graph-builder asks one probe (or all) to send its full state."""
        return f"{self.prefix}.control.resync"

    # graph-builder -> query-api replicas, UIs, third parties (core NATS)
    @property
    def graph_events(self) -> str:
        """GraphEventBatch: every change of the graph, in sequence."""
        return f"{self.prefix}.graph.events"

    @property
    def graph_snapshot(self) -> str:
        """Request/reply: SnapshotRequest -> SnapshotChunk messages on the reply inbox."""
        return f"{self.prefix}.graph.snapshot"

    # flows (JetStream stream FLOWS for raw updates; core NATS for enriched ones)
    def flows(self, host: str) -> str:
        """FlowUpdateBatch from a probe-flow or sFlow collector on `host`."""
        return f"{self.prefix}.flows.raw.{_token(host)}"

    @property
    def flows_all(self) -> str:
        return f"{self.prefix}.flows.raw.*"

    @property
    def flows_enriched(self) -> str:
        """FlowUpdateBatch after enrichment (graph node IDs attached)."""
        return f"{self.prefix}.flows.enriched"

    @property
    def flow_stream(self) -> str:
        """JetStream stream name holding raw flow updates."""
        return f"{self.prefix.upper()}_FLOWS"

    @property
    def capture_bucket(self) -> str:
        """JetStream key-value bucket holding capture definitions (key = capture UUID)."""
        return f"{self.prefix}_captures"

    def interface_metrics(self, host: str) -> str:
        """InterfaceMetricsBatch: counters for graph nodes (netlink stats, sFlow counter samples)."""
        return f"{self.prefix}.metrics.{_token(host)}"

    @property
    def interface_metrics_all(self) -> str:
        return f"{self.prefix}.metrics.*"

    @property
    def capture_status(self) -> str:
        """CaptureStatus from probes: which capture runs on which node, and its counters."""
        return f"{self.prefix}.captures.status"

    @property
    def drop_counters(self) -> str:
        """DropCounters from every stage that can lose something (bus.dropcounters), summed by query-api."""
        return f"{self.prefix}.status.drops"

    @property
    def static_request(self) -> str:
        """Request/reply query-api -> graph-builder: StaticRequest -> StaticReply (static nodes, edges, rules)."""
        return f"{self.prefix}.static.request"

    @property
    def static_bucket(self) -> str:
        """JetStream key-value bucket of static nodes/edges and node/edge rules (written by graph-builder)."""
        return f"{self.prefix}_static"

    @property
    def alert_bucket(self) -> str:
        """JetStream key-value bucket of alert definitions (written by query-api, watched by alert-evaluator)."""
        return f"{self.prefix}_alerts"

    @property
    def alert_state_bucket(self) -> str:
        """JetStream key-value bucket of alert states (written by alert-evaluator, read by query-api)."""
        return f"{self.prefix}_alert_states"

    def alert_events(self, alert_uuid: str) -> str:
        """AlertEvent (firing, resolved) of one alert, from alert-evaluator."""
        return f"{self.prefix}.alerts.{_token(alert_uuid)}"

    @property
    def alert_events_all(self) -> str:
        return f"{self.prefix}.alerts.*"

    def packet_inject(self, host: str) -> str:
        """Request/reply to the probe-flow of `host`: PacketInjectRequest -> PacketInjectReply (bus.injection)."""
        return f"{self.prefix}.inject.{_token(host)}"


def _token(value: str) -> str:
    """Make a value safe as one subject token ('.' '*' '>' and spaces are not allowed)."""
    return "".join("_" if c in ". *>\t" else c for c in value) or "_"
