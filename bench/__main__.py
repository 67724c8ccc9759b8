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
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .result import Result

import pkgutil

import bench

ORDER = ["store", "topology", "probe_topology", "gremlin", "diff", "capture", "sflow", "bus_to_store", "memory",
         "alerts"]
"""Preferred order; any other bench/scenario_*.py module runs after these."""
FOUND = sorted(m.name[len("scenario_"):] for m in pkgutil.iter_modules(bench.__path__)
               if m.name.startswith("scenario_"))
SCENARIOS = [s for s in ORDER if s in FOUND] + [s for s in FOUND if s not in ORDER]


def machine() -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not installed"

    return [
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, Python {platform.python_version()}",
        f"- nats-server: {version(['nats-server', '--version'])}",
        *(f"- {pkg} (Debian): {version(['dpkg-query', '-W', '-f', '${Version}', pkg])}"
          for pkg in ("pmacct", "softflowd", "tcpreplay", "netsniff-ng")),
    ]


def _now() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


def _read_sections(path: Path) -> dict[str, str]:
    """The scenario sections of an existing benchmarks page, by scenario name."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for chunk in path.read_text().split("<!-- scenario:")[1:]:
        name, _, text = chunk.partition(" -->\n")
        out[name.strip()] = text.rstrip("\n") + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("scenarios", nargs="*", help=f"subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--small", action="store_true", help="quick mode (no figures worth publishing)")
    parser.add_argument("--output", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    chosen = args.scenarios or SCENARIOS
    sections: list[tuple[str, str]] = []
    failed = []
    for name in chosen:
        try:
            module = importlib.import_module(f"bench.scenario_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.scenario_{name}":
                print(f"[bench] {name}: no scenario module yet", file=sys.stderr)
                sections.append((name, f"## {name}\n\nNot measured yet: no scenario in this build.\n"))
                continue
            raise
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            result: Result = module.run(small=args.small)
        except Exception:
            failed.append(name)
            traceback.print_exc()
            sections.append((name, f"## {name}\n\nFailed:\n\n```\n{traceback.format_exc()[-2000:]}\n```\n"))
            continue
        print(result.to_markdown(), flush=True)
        print(f"[bench] {name} took {time.monotonic() - started:.1f}s", file=sys.stderr)
        sections.append((name, result.to_markdown()))
    if not args.small:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        # A run of some scenarios replaces only their sections; the others keep their last figures.
        kept = _read_sections(out) if args.scenarios else {}
        kept.update({name: f"{text}\n_Measured {_now()}._\n" for name, text in sections})
        head = ["# Benchmarks", "", "Written by `make bench` (`python -m bench`). Ratios and medians; "
                "peers measured on the same machine in the same run.", "", *machine(), ""]
        body = [f"<!-- scenario:{name} -->\n{kept[name]}" for name in SCENARIOS if name in kept]
        out.write_text("\n".join(head) + "\n" + "\n".join(body))
        print(f"[bench] wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
