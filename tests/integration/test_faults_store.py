"""The store down for 60 s mid-stream, then back on the same data: flow-enricher keeps its batches unacked
(in-progress acks keep JetStream from redelivering them), retries the insert with back-off, and stores every
flow once when the store returns. Its memory stays bounded meanwhile: at most `max_ack_pending` messages are
held, the rest wait in the stream."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

import pytest

from netsonde.common.testing import free_port, start_store
from tests.integration.fault_pipeline import Producer, Services, report, wait_stored

pytestmark = [pytest.mark.slow]

OUTAGE_S = 60.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_store_down_60s_then_back(nats_url: str, unique: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="netsonde-faults-store-"))
    port = free_port()
    store = start_store(workdir, port)
    store.keep = True
    svc = Services(nats_url, store.url, f"fs{unique}", f"faults_{unique}")
    tag = f"store-{unique}"
    try:
        fe, pf = svc.flow_pipeline(max_ack_pending="200")
        producer = Producer(pf.port, tag, period_s=0.1)
        producer.start()
        time.sleep(2)
        store.popen.send_signal(signal.SIGKILL)
        store.popen.wait(10)
        at_kill = producer.sent
        assert fe.popen is not None
        rss_at_kill = _rss_mb(fe.popen.pid)
        time.sleep(OUTAGE_S)
        rss_end = _rss_mb(fe.popen.pid)
        during = producer.sent - at_kill
        errors_during = fe.metric("netsonde_flow_enricher_insert_errors_total")
        store = start_store(workdir, port)
        store.keep = True
        time.sleep(1)
        producer.stop()
        count = wait_stored(store.url, svc.database, tag, producer.sent, 120)
        report(f"store down {OUTAGE_S:.0f} s", producer.sent, count, sent_before_fault=at_kill,
               sent_during_outage=during, insert_errors=errors_during,
               enricher_rss_mb=f"{rss_at_kill:.0f}->{rss_end:.0f}")
        assert producer.errors == []
        assert during > 1000  # the producers kept going: the outage is absorbed by the stream
        assert errors_during > 0  # the enricher saw the outage (and retried)
        assert count.stored == count.distinct == producer.sent
        assert rss_end - rss_at_kill < 100, "enricher memory grew while the store was down"
        assert fe.popen.poll() is None
    finally:
        svc.stop()
        store.keep = False
        store.stop()
