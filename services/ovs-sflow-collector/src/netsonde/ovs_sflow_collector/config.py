"""ovs-sflow-collector settings (`[sflow_collector]` in the TOML file, or NETSONDE_<FIELD> variables)."""

from __future__ import annotations

import dataclasses

from netsonde.common.config import BaseConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class SFlowCollectorConfig(BaseConfig):
    SECTION = "sflow_collector"

    listen_host: str = "0.0.0.0"
    """Address the UDP socket binds to ("::" for IPv6 agents too)."""
    listen_port: int = 6343
    """UDP port of the collector (0: pick a free one, reported in /healthz)."""
    rcvbuf_bytes: int = 64 * 1024 * 1024
    """SO_RCVBUF of the socket: room for bursts (the kernel caps it at net.core.rmem_max unless root)."""
    recvmmsg: bool = True
    """Read the socket with recvmmsg in the C extension (64 datagrams per system call); false: recvfrom loop."""
    read_coalesce_s: float = 0.05
    """While datagrams keep coming, read the socket this often (fewer, larger reads; shortened when the socket
    buffer would fill first; 0: read at every epoll wake-up)."""
    process_interval_s: float = 1.0
    """How often pending samples go through the flow tables and counter samples are published (also after
    every `process_datagrams`, and before each flow update). Samples keep the time they were read at."""
    process_datagrams: int = 100_000
    """Run the flow tables as soon as this many datagrams are pending (distinct sample keys are bounded too)."""
    update_interval_s: float = 10.0
    """Flow updates are published this often (Skydive's flow.update)."""
    expire_s: float = 600.0
    """A flow idle this long is published one last time (FinishType TIMEOUT) and forgotten."""
    layer_key_mode: str = "L2"
    """L2 (default) or L3: whether MACs take part in the flow key (as the capture's LayerKeyMode)."""
    flows_per_message: int = 500
    """Flows per FlowUpdateBatch message on the JetStream stream."""
    create_stream: bool = True
    """Create the flow stream if it does not exist yet (as flow-enricher does)."""
    instance: str = ""
    """Name of this collector in batch IDs and logs (several collectors may run side by side; default: port)."""
    manage_ovs: bool = True
    """Watch the capture bucket and configure OVS sFlow for `ovssflow` captures on this host's bridges."""
    ovs_db: str = "unix:/var/run/openvswitch/db.sock"
    """OVSDB remote of this host's Open vSwitch."""
    ovs_target: str = ""
    """Collector address OVS sends to ("ip:port"; default 127.0.0.1:<listen port>)."""
    ovs_agent: str = ""
    """sFlow agent address OVS puts in datagrams (interface name or IP; "" lets OVS choose)."""
    ovs_header_bytes: int = 128
    """Sampled header size when the capture has no HeaderSize."""
    reconcile_interval_s: float = 2.0
    """How often the OVS side is re-checked (new bridges, ports, a capture's sFlow removed by hand)."""

    def validate(self) -> None:
        super().validate()
        if not (0 <= self.listen_port < 65536):
            raise ConfigError(f"setting 'listen_port': {self.listen_port} is not a port")
        if self.layer_key_mode not in ("L2", "L3"):
            raise ConfigError("setting 'layer_key_mode': L2 or L3")
        if self.read_coalesce_s < 0 or self.read_coalesce_s > 0.1:
            raise ConfigError("setting 'read_coalesce_s': between 0 and 0.1")
        if self.update_interval_s <= 0 or self.process_interval_s <= 0 or self.reconcile_interval_s <= 0:
            raise ConfigError("intervals must be > 0")
        if self.flows_per_message < 1 or self.process_datagrams < 1:
            raise ConfigError("flows_per_message and process_datagrams must be >= 1")
