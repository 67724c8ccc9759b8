"""Names that agree: each service's folder, package and `netsonde` command are the same name (issue 19)."""

from __future__ import annotations

from pathlib import Path

import click

from netsonde.cli.main import SERVICES, cli
from netsonde.cli.registry import SERVICES as REGISTRY
from netsonde.cli.registry import by_command

ROOT = Path(__file__).resolve().parents[2]


def test_folder_package_and_command_agree() -> None:
    folders = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
    assert sorted(s.command for s in REGISTRY) == folders
    for entry in REGISTRY:
        assert entry.package == entry.command.replace("-", "_")
        assert (
            ROOT / "services" / entry.command / "src" / "netsonde" / entry.package / "__main__.py"
        ).exists()


def test_old_commands_still_run_the_renamed_services() -> None:
    assert by_command("store").command == "clickhouse-store"
    assert by_command("sflow-collector").command == "ovs-sflow-collector"
    assert SERVICES["store"] == SERVICES["clickhouse-store"] == "clickhouse_store"
    assert SERVICES["sflow-collector"] == SERVICES["ovs-sflow-collector"] == "ovs_sflow_collector"
    ctx = click.Context(cli)
    assert cli.get_command(ctx, "store") is not None and cli.get_command(ctx, "sflow-collector") is not None
