"""Every service's /metrics follows Prometheus' naming rules, and docs/operations.md lists every metric.

The registries are the services' own (each service constructed, plus the parts it builds at start that register
metrics: `netsonde.cli.metric_catalogue`); their exposition is parsed back with prometheus-client's parser."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netsonde.cli.metric_catalogue import build_service, catalogue, markdown_table, registries
from netsonde.cli.registry import SERVICES

ROOT = Path(__file__).resolve().parents[2]
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
NON_BASE_UNITS = ("ms", "milliseconds", "us", "microseconds", "ns", "nanoseconds", "minutes", "hours", "days",
                  "kb", "kilobytes", "mb", "megabytes", "gb", "gigabytes", "bits", "percent")
"""Suffixes Prometheus' guidelines replace by base units (`_seconds`, `_bytes`, ratios)."""
RESERVED_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created", "_info")


@pytest.mark.parametrize("command", [s.command for s in SERVICES])
def test_every_service_exposition_parses_and_follows_naming_rules(command: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        svc = build_service(command, tmp)
        text = generate_latest(svc.metrics.registry).decode()
    families = list(text_string_to_metric_families(text))
    assert families, f"{command}: no metric at all"
    prefix = "netsonde_" + svc.name.replace("-", "_") + "_"
    with_created = {f.name for f in families if f.type in ("counter", "histogram")}
    for fam in families:
        if fam.name.endswith("_created") and fam.name.removesuffix("_created") in with_created:
            continue  # the creation time prometheus-client adds to each counter and histogram
        assert fam.name.startswith(prefix), f"{fam.name}: not prefixed {prefix}"
        assert SNAKE.match(fam.name), f"{fam.name}: not snake_case"
        assert fam.documentation.strip(), f"{fam.name}: no HELP"
        last = fam.name.rsplit("_", 1)[-1]
        assert last not in NON_BASE_UNITS, f"{fam.name}: use base units (_seconds, _bytes)"
        if fam.type == "counter":
            # the parser strips `_total` from the family; every sample must carry it on the wire
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
            assert f"{fam.name}_total" in text
        else:
            assert not fam.name.endswith(RESERVED_SUFFIXES), f"{fam.name}: suffix reserved for counters/histograms"
        if fam.type == "histogram":
            assert fam.name.endswith(("_seconds", "_bytes")), f"{fam.name}: a histogram is in a base unit"
        for sample in fam.samples:
            for label in sample.labels:
                assert SNAKE.match(label) and not label.startswith("__"), f"{fam.name}: label {label!r}"


def test_operations_doc_lists_every_metric_with_type_and_labels() -> None:
    doc = (ROOT / "docs/operations.md").read_text()
    metrics = catalogue()
    assert len(metrics) >= 90  # every service: ~100 families today
    missing = [m.exposed for m in metrics if f"`{m.exposed}`" not in doc]
    assert not missing, f"docs/operations.md lacks {missing}: run python -m netsonde.cli.metric_catalogue --write"
    for line in markdown_table(metrics).splitlines()[2:]:
        assert line in doc, f"docs/operations.md has a stale row for: {line}"


def test_prometheus_scrape_config_has_a_job_per_compose_service() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    compose = yaml.safe_load((ROOT / "deploy/compose.yml").read_text())
    assert "prometheus" in compose["services"] and "grafana" in compose["services"]
    scraped_in_network = [name for name, svc in compose["services"].items()
                          if svc.get("command") and svc.get("network_mode") != "host"
                          and svc["command"][0] in {n for s in SERVICES for n in (s.command, *getattr(s, "aliases", ()))}]
    assert scraped_in_network, "no Netsonde service in compose"
    for name in scraped_in_network:
        sd = jobs[name]["dns_sd_configs"][0]
        port = compose["services"][name].get("environment", {}).get("NETSONDE_HTTP_PORT", "8080")
        assert sd["names"] == [name] and sd["type"] == "A" and sd["port"] == int(port), name
        assert jobs[name].get("metrics_path", "/metrics") == "/metrics"


def test_drops_panel_reads_existing_counters() -> None:
    """The Grafana "Drops per stage" panel's PromQL names only counters the stages expose."""
    from netsonde.cli.grafana import DROP_STAGES

    with tempfile.TemporaryDirectory() as tmp:
        by_name = registries(tmp)
    for stage, metrics in DROP_STAGES.items():
        text = generate_latest(by_name[stage]).decode()
        prefix = "netsonde_" + stage.replace("-", "_")
        for name in metrics:
            assert f"# TYPE {prefix}_{name} counter" in text, f"{stage}: {name}"
