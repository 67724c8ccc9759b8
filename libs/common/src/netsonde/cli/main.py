"""`netsonde` command line, in the spirit of `skydive allinone` and `skydive client ...`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import click

from .registry import by_command, command_names

SERVICES = {name: s.package for name, s in command_names().items()}
"""`netsonde <command>` (or an older alias) -> package under `netsonde.` (derived from the registry)."""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SERVICES:
        # Run one service in this process (same as `python -m netsonde.<package>`), passing its flags on.
        os.execv(sys.executable, [sys.executable, "-m", by_command(argv[0]).module, *argv[1:]])
    cli.main(args=argv, prog_name="netsonde")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Netsonde real-time network analyzer. Shell completion: see docs/operations.md.",
)
def cli() -> None:
    pass


def _service_command(name: str) -> click.Command:
    command = by_command(name).command
    what = f"the {name} service" if name == command else f"old name of {command}"

    @click.pass_context
    def run(ctx: click.Context) -> None:  # reached only through `cli` directly: main() execs before parsing
        os.execv(sys.executable, [sys.executable, "-m", by_command(name).module, *ctx.args])

    return click.Command(
        name,
        callback=run,
        help=f"run {what} (flags go to the service)",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


for _name in SERVICES:
    cli.add_command(_service_command(_name))


@cli.command(help="run NATS, the ClickHouse store and every service on this host")
@click.option(
    "--state-dir",
    default=lambda: os.environ.get("NETSONDE_STATE_DIR", ".netsonde"),
    show_default="./.netsonde",
    help="where NATS, the store and the logs keep their files",
)
@click.option(
    "--api-port",
    type=int,
    default=lambda: int(os.environ.get("NETSONDE_API_PORT", "8082")),
    show_default="8082",
)
@click.option(
    "--nats-port",
    type=int,
    default=lambda: int(os.environ.get("NETSONDE_NATS_PORT", "4222")),
    show_default="4222",
)
@click.option(
    "--store-port",
    type=int,
    default=lambda: int(os.environ.get("NETSONDE_STORE_PORT", "8123")),
    show_default="8123",
)
@click.option("--only", default="", help="comma-separated services to run (default: all)")
def allinone(**options: Any) -> None:
    from .allinone import run_allinone

    sys.exit(run_allinone(argparse.Namespace(**options)))


@cli.command(help="list every setting of a service with its default")
@click.argument("service", type=click.Choice(list(SERVICES)))
def config(service: str) -> None:
    sys.exit(print_config(service))


from .client import client as _client  # noqa: E402  (after `cli`: the client group is one of its commands)

cli.add_command(_client)


class CommandLine:
    """`build_parser()`'s answer: parses a whole command line the way `netsonde` would, running nothing."""

    def parse_args(self, argv: list[str]) -> click.Context:
        """The innermost command's context; SystemExit(2) with click's message if the line is refused."""
        try:
            ctx = cli.make_context("netsonde", list(argv), resilient_parsing=False)
            command: click.Command = cli
            while isinstance(command, click.Group) and _remaining(ctx):
                name, sub, rest = command.resolve_command(ctx, _remaining(ctx))
                assert sub is not None and name is not None
                ctx = sub.make_context(name, rest, parent=ctx)
                command = sub
            if isinstance(command, click.Group):
                raise click.UsageError("missing command", ctx)
            return ctx
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(2) from exc


def _remaining(ctx: click.Context) -> list[str]:
    """The words a group left for its subcommand (click < 9 keeps the subcommand's name apart)."""
    return [*getattr(ctx, "_protected_args", []), *ctx.args]


def build_parser() -> CommandLine:
    """The whole command line (services, allinone, client, config), without running anything."""
    return CommandLine()


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
