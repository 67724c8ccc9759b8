"""Cumulative counters of this host's captures, for probe-flow's Prometheus counters.

A table's and a reader's counters start from zero with every capture (and a restarted capture gets a new
table), so the sum over the running captures goes down when one stops or restarts. The controller keeps
what stopped and replaced captures had counted (`retire`), added once at that moment, so `totals` never goes
down and counts every packet and event of every capture this probe ran.

Keys: "packets", "kernel_drops", "stream_errors", "flows_refused", "bad/<kind>" (decode errors) and
"event/<name>" (option and target events, `FlowTable.stats.events`).
"""

from __future__ import annotations

from typing import Any

from netsonde.flow.table import FlowTable

Counters = dict[str, int]


def table_counters(table: FlowTable) -> Counters:
    """What one flow table has counted so far."""
    st = table.stats
    out: Counters = {"packets": st.packets, "flows_refused": st.flows_dropped}
    for k, v in st.decode_errors.items():
        out["bad/" + k] = v
    for k, v in st.events.items():
        out["event/" + k] = v
    return out


def reader_counters(reader: Any) -> Counters:
    """What one packet reader (a BaseCapture) has counted so far."""
    return {"kernel_drops": reader.packets_dropped, "stream_errors": getattr(reader, "stream_errors", 0)}


def add_into(total: Counters, part: Counters) -> Counters:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v
    return total
