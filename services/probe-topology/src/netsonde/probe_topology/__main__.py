"""`python -m netsonde.probe_topology`: one per host, publishes the host's topology on NATS."""

from netsonde.common.service import main_for

from .config import ProbeTopologyConfig
from .service import ProbeTopologyService

if __name__ == "__main__":
    main_for(ProbeTopologyService, ProbeTopologyConfig)
