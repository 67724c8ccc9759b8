"""alert-evaluator: Skydive's alerting (`/api/alert`) over Netsonde's graph and flows.

Watches the alert definitions' key-value bucket, keeps a read replica of the graph, re-evaluates each
graph-triggered alert when a graph change can affect it (dependencies.py) and each periodic one on its
schedule, and delivers every `firing`/`resolved` transition on the bus, to its webhook and to ClickHouse
(`alert_events`).
"""
