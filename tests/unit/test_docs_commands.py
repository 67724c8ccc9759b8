"""The shell commands the docs give a user to paste must work as written.

Every ```sh block of README.md and docs/*.md is checked: it parses (`bash -n`); each command in it names
things that exist (a Makefile target, an importable `python -m` module, a repository path, a `netsonde`
command line the CLI's own parser accepts, a JSON body that is JSON); and the cheap, safe ones run
(`make help`, `netsonde ... --help`, `netsonde config <service>`, `python -m netsonde.flow.pcap FILE`,
`python -c` snippets). Blocks without a language (diagrams, usage synopses) are not commands: not checked.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from netsonde.cli.main import SERVICES, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"sh", "bash", "shell", "console"}
OPERATOR_CHARS = set(";&|\n")
"""Characters of the operators between simple commands (`&&`, `|`, `;`, `&`, newline, and runs of them)."""
REPO_DIRS = ("tests/", "docs/", "bench/", "deploy/", "libs/", "services/")
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    """One fenced shell block: where it is and its text."""

    path: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def shell_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group(2) in SHELL_LANGS:
                line = text.count("\n", 0, m.start()) + 2
                blocks.append(Block(path, line, m.group(3)))
    return blocks


def _strip_comments(text: str) -> str:
    """Drop `# ...` comments the way bash does: a `#` that starts a word, outside quotes."""
    out: list[str] = []
    quote = ""
    prev = "\n"
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quote != "'":
            out.append(text[i : i + 2])
            i += 2
            prev = "x"
            continue
        if not quote:
            if c in "'\"":
                quote = c
            elif c == "#" and prev in " \t\n":
                end = text.find("\n", i)
                i = len(text) if end < 0 else end
                continue
        elif c == quote:
            quote = ""
        out.append(c)
        prev = c
        i += 1
    return "".join(out)


def commands(block: Block) -> list[list[str]]:
    """The simple commands of a block as argv lists (leading VAR=value assignments removed)."""
    text = _strip_comments(block.text).replace("\\\n", " ")
    text = re.sub(r"\$\([^()]*\)", "SUBST", text)  # command substitutions: a word, not a command here
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|\n")
    lex.whitespace = " \t\r"
    lex.whitespace_split = True
    lex.commenters = ""
    out: list[list[str]] = []
    current: list[str] = []
    for token in lex:
        if set(token) <= OPERATOR_CHARS:
            out.append(current)
            current = []
        elif current or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token, re.S):
            current.append(token)
    out.append(current)
    return [c for c in out if c]


def _is_python(word: str) -> bool:
    return Path(word).name in ("python", "python3")


def _is_netsonde(word: str) -> bool:
    return word in ("netsonde", ".venv/bin/netsonde")


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+):(?!=)", text, re.M)}


BLOCKS = shell_blocks()


def test_the_docs_have_shell_blocks() -> None:
    # the extraction itself must find the commands (README's quick start, api.md's curl examples ...)
    assert len(BLOCKS) >= 15
    assert any(c[:2] == ["make", "allinone"] for b in BLOCKS for c in commands(b))
    assert any(c[0] == "curl" for b in BLOCKS if b.path.name == "api.md" for c in commands(b))


def test_command_splitting() -> None:
    block = Block(
        ROOT / "README.md",
        1,
        "make a &   # x # y\nnats-server -js &\nA=1 B=$(hostname) \\\n  .venv/bin/python -m m 'x # y' && ls\n"
        'curl -d \'{"a": "b#c"}\'  # z\npython -c "\nprint(1)\n"\n',
    )
    assert commands(block) == [
        ["make", "a"],
        ["nats-server", "-js"],
        [".venv/bin/python", "-m", "m", "x # y"],
        ["ls"],
        ["curl", "-d", '{"a": "b#c"}'],
        ["python", "-c", "\nprint(1)\n"],
    ]


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_block_parses_in_bash(block: Block) -> None:
    res = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, f"{block}: bash -n: {res.stderr}"


def _exists(path: str) -> bool:
    """A repository path, or a glob the shell expands to at least one."""
    return any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()


def _problems(argv: list[str], targets: set[str]) -> list[str]:
    """What in one command does not exist (empty: all of it does)."""
    found: list[str] = []
    for word in argv:
        path = word.lstrip("@").split("::")[0]
        if path.startswith(REPO_DIRS) and not _exists(path):
            found.append(f"no such path {path!r}")
    head = argv[0]
    if head.startswith(".venv/bin/") and not (ROOT / head).exists():
        found.append(f"no such program {head!r}")
    if head == "make":
        found += [f"no make target {t!r}" for t in argv[1:] if not t.startswith("-") and t not in targets]
    if _is_python(head) and len(argv) > 2 and argv[1] == "-m":
        module = argv[2]
        if importlib.util.find_spec(module) is None:
            found.append(f"no module {module!r}")
        if module == "pytest":
            found += [
                f"no test file {a!r}" for a in argv[3:] if a.endswith(".py") and not (ROOT / a).exists()
            ]
    if _is_netsonde(head) and (len(argv) < 2 or argv[1] not in SERVICES):
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit:
            found.append(f"the netsonde CLI refuses {shlex.join(argv[1:])!r}")
    if head == "curl":
        for flag, body in zip(argv, argv[1:], strict=False):
            if flag in ("-d", "--data", "--data-raw") and body.lstrip().startswith("{"):
                try:
                    json.loads(body)
                except ValueError as exc:
                    found.append(f"the body {body!r} is not JSON: {exc}")
    return found


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_commands_name_what_exists(block: Block) -> None:
    targets = _make_targets()
    problems = [f"{shlex.join(c)[:90]}: {p}" for c in commands(block) for p in _problems(c, targets)]
    assert not problems, f"{block}:\n  " + "\n  ".join(problems)


def _runnable(argv: list[str]) -> list[str] | None:
    """The argv to run for a cheap, safe command of the docs (None: not run)."""
    head = argv[0]
    if _is_netsonde(head) and len(argv) > 1 and argv[1] == "config":
        return [str(ROOT / ".venv/bin/netsonde"), *argv[1:]]
    if _is_netsonde(head) and len(argv) > 1 and argv[1] in ("client", "allinone"):
        # the command line up to its last subcommand, with --help: the entry point runs, nothing is contacted
        words = [w for w in argv[1:] if not w.startswith("-")]
        path = [w for w in words[:3] if re.fullmatch(r"[a-z]+", w)]
        return [str(ROOT / ".venv/bin/netsonde"), *path, "--help"]
    if _is_python(head) and argv[1:3] == ["-m", "netsonde.flow.pcap"] and "--help" not in argv:
        return [sys.executable, *argv[1:]]
    if _is_python(head) and len(argv) == 3 and argv[1] == "-c":
        return [sys.executable, "-c", argv[2]]
    return None


def _safe_runs() -> list[tuple[str, list[str]]]:
    runs: dict[str, tuple[str, list[str]]] = {}
    for block in BLOCKS:
        for argv in commands(block):
            run = _runnable(argv)
            if run is not None:
                runs.setdefault(shlex.join(run[1:]), (str(block), run))
    runs["make help"] = ("Makefile", ["make", "-s", "help"])
    runs["netsonde --help"] = ("README.md", [str(ROOT / ".venv/bin/netsonde"), "--help"])
    runs["netsonde config graph-builder"] = (
        "README.md",
        [str(ROOT / ".venv/bin/netsonde"), "config", "graph-builder"],
    )
    return sorted(runs.values(), key=lambda r: r[0])


SAFE_RUNS = _safe_runs()


def test_the_safe_commands_include_the_expected_ones() -> None:
    joined = [shlex.join(r[1][1:]) for r in SAFE_RUNS]
    assert "client topology query --help" in joined
    assert any(j.startswith("-m netsonde.flow.pcap tests/data/") for j in joined)
    assert any(j.startswith("-c ") for j in joined)


def _run_id(v: object) -> str:
    return str(v) if isinstance(v, str) else " ".join(str(w) for w in v[1:])[:50].replace("\n", " ")  # type: ignore[index]


@pytest.mark.parametrize("where,argv", SAFE_RUNS, ids=_run_id)
def test_safe_command_runs(where: str, argv: list[str]) -> None:
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{where}: {shlex.join(argv)} exited {res.returncode}: {res.stderr[-2000:]}"
    assert res.stdout.strip(), f"{where}: {shlex.join(argv)} printed nothing"
    if argv[0] == "make":
        assert {"lint", "test", "test-unit", "allinone"} <= set(re.findall(r"^\s+(\S+)", res.stdout, re.M))
    if "netsonde.flow.pcap" in argv:
        flows = [json.loads(line) for line in res.stdout.splitlines()]
        assert flows and all("Metric" in f for f in flows)
