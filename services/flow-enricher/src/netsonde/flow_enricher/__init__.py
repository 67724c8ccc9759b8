"""flow-enricher: JetStream flow updates -> graph node IDs attached -> ClickHouse (columnar, idempotent)
-> enriched batches republished on core NATS.

Components: `lookup.EndpointLookup` (MAC/IP/TID -> graph node, fed from a Graph or graph events),
`writer.FlowWriter` (columnar inserts of the three flow tables), `stream.ensure_flow_stream` (the
JetStream stream), `service.FlowEnricherService` (the pull loop: fetch, decode, enrich, insert, ack,
republish). Storage schema: `netsonde.common.flowschema`.
"""
