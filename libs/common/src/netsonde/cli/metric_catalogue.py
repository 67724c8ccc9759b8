"""Every Prometheus metric every Netsonde service exposes, read from the services' own registries.

Each service is constructed (not started: nothing connects, binds or spawns), then the parts it builds only
in `on_start` and that register metrics there (graph-builder's static controller, probe-topology's container
watcher, the store's ClickHouse HTTP handler) are built on it the same way. The list feeds the metric table
of docs/operations.md (`python -m netsonde.cli.metric_catalogue`) and the naming test.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from .registry import SERVICES


@dataclass(frozen=True)
class MetricInfo:
    """One metric family as /metrics shows it (`name` without the `_total`/`_bucket` sample suffixes)."""

    service: str
    name: str
    type: str
    labels: tuple[str, ...]
    help: str

    @property
    def exposed(self) -> str:
        """The name a PromQL query uses (counters carry `_total` on the wire)."""
        return f"{self.name}_total" if self.type == "counter" else self.name


def _service_class(package: str) -> type:
    module = importlib.import_module(f"netsonde.{package}.service")
    from netsonde.common.service import Service

    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, Service)
        and v is not Service
        and v.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise RuntimeError(f"netsonde.{package}.service: expected one Service class, found {classes}")
    return classes[0]


def _config_class(package: str) -> type:
    module = importlib.import_module(f"netsonde.{package}.config")
    from netsonde.common.config import BaseConfig

    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, BaseConfig)
        and v is not BaseConfig
        and v.__module__ == module.__name__
    ]
    return classes[-1]


def _start_time_parts(package: str, svc: Any) -> None:
    """Build, without starting them, the parts that register metrics in `on_start`."""
    if package == "graph_builder":
        from netsonde.graph_builder.static import StaticController
        from netsonde.gremlin import QueryLimits

        StaticController(svc, QueryLimits())
    elif package == "probe_topology":
        from netsonde.probe_topology.docker import ContainerWatcher

        ContainerWatcher("unix:///nonexistent.sock", lambda: None, svc.metrics)
    elif package == "clickhouse_store":
        from netsonde.clickhouse_store.http import ClickHouseHTTP

        ClickHouseHTTP(svc.engine, svc.config, svc.metrics)


def build_service(command: str, data_dir: str) -> Any:
    """One service (`netsonde <command>`) constructed, not started, with every metric it can expose."""
    entry = next(s for s in SERVICES if s.command == command)
    config_cls = _config_class(entry.package)
    overrides = {"data_dir": data_dir} if entry.package == "clickhouse_store" else {}
    svc = _service_class(entry.package)(config_cls(**overrides))
    _start_time_parts(entry.package, svc)
    return svc


def registries(data_dir: str) -> dict[str, CollectorRegistry]:
    """Service name (the metric prefix `netsonde_<name>`) -> its registry, for every service."""
    out = {}
    for entry in SERVICES:
        svc = build_service(entry.command, data_dir)
        out[svc.name] = svc.metrics.registry
    return out


def catalogue() -> list[MetricInfo]:
    """Every metric of every service, ordered by service then name."""
    out: list[MetricInfo] = []
    with tempfile.TemporaryDirectory(prefix="netsonde-metrics-") as tmp:
        for service, registry in registries(tmp).items():
            for family in registry.collect():
                labels = sorted({k for s in family.samples for k in s.labels if k not in ("le", "quantile")})
                if not labels:
                    labels = sorted(getattr(_collector_of(registry, family.name), "_labelnames", ()))
                out.append(MetricInfo(service, family.name, family.type, tuple(labels), family.documentation))
    return sorted(out, key=lambda m: (m.service, m.name))


def _collector_of(registry: CollectorRegistry, name: str) -> object:
    """The collector behind a family (labelled metrics with no child yet show no samples)."""
    names_to_collectors = registry._names_to_collectors  # prometheus-client keeps no public lookup
    return names_to_collectors.get(name) or names_to_collectors.get(f"{name}_total")


def markdown_table(metrics: list[MetricInfo]) -> str:
    """The table docs/operations.md carries (regenerate it with `python -m netsonde.cli.metric_catalogue`)."""
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for m in metrics:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        rows.append(f"| `{m.exposed}` | {m.type} | {labels} | {m.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


BEGIN_MARK = (
    "<!-- metric-table:begin (python -m netsonde.cli.metric_catalogue --write docs/operations.md) -->"
)
END_MARK = "<!-- metric-table:end -->"


def write_doc(path: str, table: str) -> None:
    """Replace the table between the markers of `path` (the rest of the page is left as it is)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, sep, rest = text.partition(BEGIN_MARK)
    _, sep2, tail = rest.partition(END_MARK)
    if not sep or not sep2:
        raise SystemExit(f"{path}: no {BEGIN_MARK!r} ... {END_MARK!r} section")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{BEGIN_MARK}\n{table}{END_MARK}{tail}")


if __name__ == "__main__":
    table = markdown_table(catalogue())
    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        write_doc(sys.argv[2], table)
    elif len(sys.argv) == 1:
        sys.stdout.write(table)
    else:
        raise SystemExit("usage: python -m netsonde.cli.metric_catalogue [--write docs/operations.md]")
