"""The embedded ClickHouse store: the chdb engine served through ClickHouse's HTTP interface.

Run it with `netsonde clickhouse-store --data-dir DIR --port PORT`; talk to it with clickhouse-connect
(`netsonde.common.clickhouse.connect("http://127.0.0.1:PORT")`) like to any ClickHouse server.
"""

from .config import StoreConfig
from .engine import Engine
from .service import StoreService

__all__ = ["Engine", "StoreConfig", "StoreService"]
