"""`netsonde` command line, in the spirit of `skydive allinone` and `skydive client ...`."""

from __future__ import annotations

import argparse
import os
import sys

from .registry import by_command, command_names

SERVICES = {name: s.package for name, s in command_names().items()}
"""`netsonde <command>` (or an older alias) -> package under `netsonde.` (derived from the registry)."""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SERVICES:
        # Run one service in this process (same as `python -m netsonde.<package>`), passing its flags on.
        os.execv(sys.executable, [sys.executable, "-m", by_command(argv[0]).module, *argv[1:]])

    args = build_parser().parse_args(argv)
    if args.command == "allinone":
        from .allinone import run_allinone

        sys.exit(run_allinone(args))
    if args.command == "client":
        from . import client

        sys.exit(client.run(args))
    if args.command == "config":
        sys.exit(print_config(args.service))


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (services, allinone, client, config), without running anything."""
    parser = argparse.ArgumentParser(prog="netsonde", description="Netsonde real-time network analyzer")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SERVICES:
        command = by_command(name).command
        what = f"the {name} service" if name == command else f"old name of {command}"
        sub.add_parser(name, help=f"run {what} (flags go to the service)")

    p_all = sub.add_parser("allinone", help="run NATS, the ClickHouse store and every service on this host")
    p_all.add_argument(
        "--state-dir",
        default=os.environ.get("NETSONDE_STATE_DIR", ".netsonde"),
        help="where NATS, the store and the logs keep their files (default: ./.netsonde)",
    )
    p_all.add_argument("--api-port", type=int, default=int(os.environ.get("NETSONDE_API_PORT", "8082")))
    p_all.add_argument("--nats-port", type=int, default=int(os.environ.get("NETSONDE_NATS_PORT", "4222")))
    p_all.add_argument("--store-port", type=int, default=int(os.environ.get("NETSONDE_STORE_PORT", "8123")))
    p_all.add_argument("--only", default="", help="comma-separated services to run (default: all)")

    from . import client

    client.add_parser(sub)

    p_cfg = sub.add_parser("config", help="list every setting of a service with its default")
    p_cfg.add_argument("service", choices=list(SERVICES))
    return parser


def print_config(service: str) -> int:
    import importlib

    from netsonde.common.config import BaseConfig

    module = importlib.import_module(f"netsonde.{SERVICES[service]}.config")
    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, BaseConfig) and v is not BaseConfig
    ]
    for cls in classes:
        print(f"[{cls.SECTION}]")
        for env, _typ, default, doc in cls.describe():
            print(f"  {env:<40} {str(default)!r:<32} {doc}")
    return 0
