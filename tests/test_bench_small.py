"""Every benchmark scenario runs once in its small mode, so the harness never rots (no speed asserted)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench
from bench.result import Result

SCENARIOS = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("scenario_"))


def test_there_are_scenarios() -> None:
    assert SCENARIOS, "bench/ has no scenario modules"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_small_mode(name: str) -> None:
    result = importlib.import_module(f"bench.{name}").run(small=True)
    assert isinstance(result, Result)
    assert result.rows, f"{name} produced no rows"
    assert all(len(row) == len(result.columns) for row in result.rows)
