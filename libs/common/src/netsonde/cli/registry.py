"""The services Netsonde runs: one list for the `netsonde <service>` commands and the allinone supervisor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceEntry:
    """One service: its command (= its services/ folder), its Python package, whether allinone runs it."""

    command: str
    """`netsonde <command>` runs it (`python -m netsonde.<package>`); named as its `services/` folder."""
    package: str
    """The package under `netsonde.` that has the service's `__main__` and `config` modules."""
    supervised: bool = True
    """Started by allinone in list order (the store is started on its own, before them, when needed)."""
    aliases: tuple[str, ...] = ()
    """Older command names that still run it (`netsonde store` = `netsonde clickhouse-store`)."""

    @property
    def module(self) -> str:
        return f"netsonde.{self.package}"


SERVICES: tuple[ServiceEntry, ...] = (
    ServiceEntry("graph-builder", "graph_builder"),
    ServiceEntry("query-api", "query_api"),
    ServiceEntry("flow-enricher", "flow_enricher"),
    ServiceEntry("alert-evaluator", "alert_evaluator"),
    ServiceEntry("probe-topology", "probe_topology"),
    ServiceEntry("probe-flow", "probe_flow"),
    ServiceEntry("ovs-sflow-collector", "ovs_sflow_collector", aliases=("sflow-collector",)),
    ServiceEntry("clickhouse-store", "clickhouse_store", supervised=False, aliases=("store",)),
)
"""Every service, in the order allinone starts them (and stops them in reverse)."""


def by_command(command: str) -> ServiceEntry:
    """The service a `netsonde <command>` (or an old alias) names; KeyError with the known names otherwise."""
    for entry in SERVICES:
        if command == entry.command or command in entry.aliases:
            return entry
    raise KeyError(f"unknown service {command!r}; known: {', '.join(s.command for s in SERVICES)}")


def command_names() -> dict[str, ServiceEntry]:
    """Every name `netsonde <name>` accepts (commands, then aliases) -> its service."""
    names = {s.command: s for s in SERVICES}
    names.update({alias: s for s in SERVICES for alias in s.aliases})
    return names


STORE = by_command("clickhouse-store")
"""The embedded ClickHouse store, which allinone starts before the others when no ClickHouse URL is set."""
