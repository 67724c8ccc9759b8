"""The services Netsonde runs: one list for the `netsonde <service>` commands and the allinone supervisor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceEntry:
    """One service: its command name, its Python package, and whether `netsonde allinone` runs it."""

    command: str
    """`netsonde <command>` runs it (`python -m netsonde.<package>`)."""
    package: str
    """The package under `netsonde.` that has the service's `__main__` and `config` modules."""
    supervised: bool = True
    """Started by allinone in list order (the store is started on its own, before them, when needed)."""

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
    ServiceEntry("sflow-collector", "sflow_collector"),
    ServiceEntry("store", "store", supervised=False),
)
"""Every service, in the order allinone starts them (and stops them in reverse)."""


def by_command(command: str) -> ServiceEntry:
    """The service a `netsonde <command>` names; KeyError with the known names otherwise."""
    for entry in SERVICES:
        if entry.command == command:
            return entry
    raise KeyError(f"unknown service {command!r}; known: {', '.join(s.command for s in SERVICES)}")
