"""probe-flow: captures packets on this host's interfaces (AF_PACKET TPACKET_V3 or libpcap) into Skydive-style
flow tables and publishes flow updates to the JetStream flow stream. See docs/flows.md."""
