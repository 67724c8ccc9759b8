"""query-api: Skydive's REST and WebSocket API over a read replica of the graph and the ClickHouse history.

Existing Skydive clients work unchanged: `POST /api/topology` with `{"GremlinQuery": ...}`, `/api/capture`,
`/api/node`, `/api/edge`, `/api/status`, and `/ws/subscriber` with Skydive's message envelope.
"""
