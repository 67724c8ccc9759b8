"""ovs-sflow-collector: sFlow v5 datagrams -> flow updates (JetStream) and interface counters (core NATS),
plus the `ovssflow` capture controller that points Open vSwitch bridges at the collector.

- `decode`: the reference sFlow v5 decoder; `_fastsflow` (C): the scanner/aggregator of the hot path.
- `collector.SFlowCollector`: datagrams -> FlowTable (probe-flow's flow logic) -> flows and counters, no I/O.
- `ovs`: ovs-vsctl wrapper (sFlow rows, port map, port TIDs); `captures`: the capture controller.
- `service.SFlowCollectorService`: the process (`python -m netsonde.ovs_sflow_collector`).
"""
