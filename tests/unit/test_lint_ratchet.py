"""lint-ratchet.txt (the files `make lint` holds to ruff format and mypy --strict) only grows.

A file leaves the list only when it leaves the repository (a module moved or split lists its new files
instead); the history of the list is read from git, so a removal in any commit is caught.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RATCHET = ROOT / "lint-ratchet.txt"


def listed() -> list[str]:
    lines = [line.strip() for line in RATCHET.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_listed_files_exist_once() -> None:
    files = listed()
    assert len(files) >= 20
    assert len(files) == len(set(files)), "listed twice: " + ", ".join(
        {f for f in files if files.count(f) > 1}
    )
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing, f"listed but not in the repository (list the moved module's new files): {missing}"
    assert all(f.endswith(".py") for f in files)


def test_nothing_that_still_exists_was_ever_removed() -> None:
    log = "".join(
        subprocess.run(
            ["git", *cmd, "--", "lint-ratchet.txt"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for cmd in (["log", "-p", "--format="], ["diff", "HEAD"])  # every commit, and the uncommitted change
    )
    assert "+libs/common/src/netsonde/common/config.py" in log  # the history is there (not a shallow copy)
    removed = {
        line[1:].strip() for line in log.splitlines() if line.startswith("-") and not line.startswith("---")
    }
    removed = {f for f in removed if f and not f.startswith("#")}
    current = set(listed())
    dropped = sorted(f for f in removed - current if (ROOT / f).exists())
    assert not dropped, (
        f"removed from lint-ratchet.txt while the file still exists (fix the file instead): {dropped}"
    )
