"""Session-wide real components: one NATS server and one ClickHouse store (or NETSONDE_CLICKHOUSE_URL).

Each test isolates itself with its own subject prefix / database name instead of its own server, which keeps
the suite fast on two cores while still talking to the real things.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from netsonde.common.testing import start_nats, start_store


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    proc = start_nats()
    yield proc.url
    proc.stop()


@pytest.fixture(scope="session")
def clickhouse_url() -> Iterator[str]:
    """A real server when NETSONDE_CLICKHOUSE_URL is set, else the embedded store started for the session."""
    url = os.environ.get("NETSONDE_CLICKHOUSE_URL")
    if url:
        yield url
        return
    proc = start_store()
    yield proc.url
    proc.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiers are a contract (`-m "not ovs"` must leave out every test that needs OVS daemons): a test
    that uses the `ovs` fixture (tests/integration/ovs_fixture.py) must be marked `ovs` and `root`."""
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        if "ovs" in getattr(item, "fixturenames", ()) and not {"ovs", "root"} <= marks:
            raise pytest.UsageError(f"{item.nodeid} uses the ovs fixture: mark it @pytest.mark.ovs and root")


@pytest.fixture
def unique() -> str:
    """A short unique token for subject prefixes, database names and interface names."""
    return uuid.uuid4().hex[:8]
