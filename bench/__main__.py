"""Run every benchmark scenario and write docs/benchmarks.md.

python -m bench                 # every scenario, full size
python -m bench --small         # the quick mode `make test` runs
python -m bench store gremlin   # only these scenarios
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import bench

from .result import Result, read_sections, render_page, stamp

ORDER = [
    "store",
    "topology",
    "probe_topology",
    "gremlin",
    "diff",
    "capture",
    "sflow",
    "bus_to_store",
    "memory",
    "alerts",
]
"""Preferred order; any other bench/scenario_*.py module runs after these."""
FOUND = sorted(
    m.name[len("scenario_") :] for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("scenario_")
)
SCENARIOS = [s for s in ORDER if s in FOUND] + [s for s in FOUND if s not in ORDER]


def cpu_model() -> str:
    """`N CPUs (model)`: written into every section's stamp and the page header."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu})"


def machine() -> list[str]:
    """The machine and the peers' versions at the last run (each section states its own date and load)."""

    def version(cmd: list[str]) -> str:
        try:
            return (
                subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
            )
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not installed"

    return [
        f"- Last written: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {cpu_model()}, kernel {platform.release()}, Python {platform.python_version()}",
        f"- nats-server: {version(['nats-server', '--version'])}",
        *(
            f"- {pkg} (Debian): {version(['dpkg-query', '-W', '-f', '${Version}', pkg])}"
            for pkg in ("pmacct", "softflowd", "tcpreplay", "netsniff-ng")
        ),
    ]


def run_scenario(name: str, small: bool) -> tuple[str, bool]:
    """One scenario's section (its table, or why it failed), closed by its own stamp; and whether it ran."""
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    ok = True
    try:
        module = importlib.import_module(f"bench.scenario_{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bench.scenario_{name}":
            raise
        print(f"[bench] {name}: no scenario module yet", file=sys.stderr)
        return f"## {name}\n\nNot measured yet: no scenario in this build.\n", True
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    try:
        result: Result = module.run(small=small)
        text = result.to_markdown()
        print(text, flush=True)
    except Exception:
        ok = False
        traceback.print_exc()
        text = f"## {name}\n\nFailed:\n\n```\n{traceback.format_exc()[-2000:]}\n```\n"
    took = time.monotonic() - t0
    print(f"[bench] {name} took {took:.1f}s", file=sys.stderr)
    return f"{text}\n{stamp(name, started, cpu_model(), took, load_before, os.getloadavg()[0])}\n", ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("scenarios", nargs="*", help=f"subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--small", action="store_true", help="quick mode (no figures worth publishing)")
    parser.add_argument("--output", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    chosen = args.scenarios or SCENARIOS
    sections: dict[str, str] = {}
    failed = []
    for name in chosen:
        sections[name], ok = run_scenario(name, args.small)
        if not ok:
            failed.append(name)
    if not args.small:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        # A run of some scenarios replaces only their sections; the others keep their last figures and stamps.
        kept = read_sections(out.read_text()) if args.scenarios and out.exists() else {}
        kept.update(sections)
        out.write_text(render_page(machine(), kept, SCENARIOS))
        print(f"[bench] wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
