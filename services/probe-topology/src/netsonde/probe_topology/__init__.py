"""probe-topology: the interfaces, namespaces and OVS objects of one host, published on NATS.

Entry points: `ProbeTopologyService` (service.py), `ProbeTopologyConfig` (config.py), the pure parts
`netlink.parse_link`/`parse_addr` and `builder.build`.
"""
