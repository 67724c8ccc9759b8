"""Prometheus instruments, prefixed with the service name, in one registry per service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Factory for a service's instruments: `netsonde_<service>_<name>`."""

    def __init__(self, service: str) -> None:
        self.prefix = "netsonde_" + service.replace("-", "_")
        self.registry = CollectorRegistry(auto_describe=True)
        self.bad_messages = self.counter(
            "bad_messages_total", "Bus messages dropped as undecodable", ["subject_kind", "reason"]
        )

    def counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        return Counter(f"{self.prefix}_{name}", doc, labels or [], registry=self.registry)

    def gauge(self, name: str, doc: str, labels: list[str] | None = None) -> Gauge:
        return Gauge(f"{self.prefix}_{name}", doc, labels or [], registry=self.registry)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: list[str] | None = None,
        buckets: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
    ) -> Histogram:
        return Histogram(f"{self.prefix}_{name}", doc, labels or [], buckets=buckets, registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
