"""`python -m netsonde.clickhouse_store --data-dir DIR --port PORT [--host H] [--user U --password P]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from netsonde.common.config import ConfigError
from netsonde.common.logs import setup_logging

from .config import StoreConfig
from .service import StoreService


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="netsonde clickhouse-store",
        description="Embedded ClickHouse store (chdb engine "
        "behind ClickHouse's HTTP interface). Flags override NETSONDE_STORE_* settings.",
    )
    p.add_argument("--data-dir", help="chdb data directory (one store process per directory)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="ClickHouse HTTP port (default 8123; 0 picks a free one)")
    p.add_argument("--user", help="user clients must present (default: default)")
    p.add_argument("--password", help="password clients must present (default: none)")
    p.add_argument("--http-port", type=int, help="health/metrics port (default: a free one)")
    args = p.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    try:
        config = StoreConfig.load(**overrides)
    except ConfigError as exc:
        print(f"netsonde clickhouse-store: {exc}", file=sys.stderr)
        return 2
    setup_logging("store", config.log_level, config.log_format)
    service = StoreService(config)
    try:
        asyncio.run(service.run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
