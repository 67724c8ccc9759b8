"""sFlow v5: the readable reference decoder (`decode`), its C scanner and sample fold (`_fastsflow`, built by
libs/flow's setup.py; `fold` is the fold's readable reference) and the core that turns datagrams into flows
and interface counters (`collector.SFlowCollector`).

A library, so every component that receives sFlow uses the same code: the ovs-sflow-collector service (OVS
bridges' `ovssflow` captures) and probe-flow (`sflow` captures listening for an external agent).
"""
