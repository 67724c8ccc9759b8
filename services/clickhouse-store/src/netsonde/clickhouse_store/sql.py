"""Just enough SQL lexing to route a request: the statement kind, a trailing FORMAT, INSERT data boundaries.

The engine parses the SQL itself; the store only needs to know where an INSERT's inline data starts, which
output format a query asks for, and whether a text holds more than one statement. The scanner skips string
literals, quoted identifiers and comments so that a `FORMAT` or `;` inside them is never mistaken for one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")

READ_ONLY_KINDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "(", "VALUES"}
)


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "quoted" (string/identifier literal), "number", "punct"
    text: str
    start: int
    end: int


class LexError(ValueError):
    """An unterminated literal or comment."""


def tokens(text: str, start: int = 0) -> Iterator[Token]:
    """Yield the tokens of `text` from `start`, skipping whitespace and comments."""
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n\f\v":
            i += 1
        elif c == "-" and text.startswith("--", i) or c == "#" and text.startswith("#!", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise LexError("unterminated comment")
            i = j + 2
        elif c in "'\"`":
            j = i + 1
            while True:
                if j >= n:
                    raise LexError("unterminated quoted literal")
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            yield Token("quoted", text[i : j + 1], i, j + 1)
            i = j + 1
        else:
            m = _WORD.match(text, i)
            if m:
                yield Token("word", m.group(), i, m.end())
                i = m.end()
                continue
            m = _NUMBER.match(text, i)
            if m:
                yield Token("number", m.group(), i, m.end())
                i = m.end()
                continue
            yield Token("punct", c, i, i + 1)
            i += 1


def first_keyword(text: str) -> str:
    """The upper-cased first token ('' for an empty text)."""
    for tok in tokens(text):
        return tok.text.upper()
    return ""


@dataclass(frozen=True)
class InsertHead:
    """An `INSERT ... FORMAT <fmt>` whose data follows the head in the same text."""

    target: str  # "INSERT INTO t (a, b)" without SETTINGS / FORMAT
    settings: str  # the text of an inline SETTINGS clause, without the keyword ('' if none)
    fmt: str
    data_offset: int  # where the inline data starts


def parse_insert_head(text: str) -> InsertHead | None:
    """Split `INSERT INTO t [(cols)] [SETTINGS ...] FORMAT fmt<newline>data`; None for other statements.

    `INSERT ... VALUES` and `INSERT ... SELECT` return None: they are plain SQL for the engine. The data
    starts after the format name, its trailing blanks and at most one line break (ClickHouse's own rule),
    so binary data whose first byte happens to be whitespace is kept intact.
    """
    it = tokens(text)
    try:
        first = next(it)
        if first.text.upper() != "INSERT":
            return None
        depth = 0
        settings_at = -1
        for tok in it:
            if tok.kind == "punct":
                depth += tok.text == "("
                depth -= tok.text == ")"
                continue
            if depth or tok.kind != "word":
                continue
            word = tok.text.upper()
            if word in ("SELECT", "VALUES", "WITH"):
                return None
            if word == "SETTINGS" and settings_at < 0:
                settings_at = tok.start
            elif word == "FORMAT":
                fmt_tok = next(it)
                if fmt_tok.kind != "word":
                    return None
                j = fmt_tok.end
                while j < len(text) and text[j] in " \t\f":
                    j += 1
                if j < len(text) and text[j] == "\r":
                    j += 1
                if j < len(text) and text[j] == "\n":
                    j += 1
                head_end = settings_at if settings_at >= 0 else tok.start
                settings = text[settings_at + len("SETTINGS") : tok.start].strip() if settings_at >= 0 else ""
                return InsertHead(text[first.start : head_end].strip(), settings, fmt_tok.text, j)
    except (StopIteration, LexError):
        return None
    return None


def output_format(text: str) -> str | None:
    """The format named by the statement's own output clause: a top-level `FORMAT name` that ends the
    statement, or is followed only by `SETTINGS ...` (so `SELECT format FROM t` names no format)."""
    top: list[Token] = []
    depth = 0
    try:
        for tok in tokens(text):
            if tok.kind == "punct" and tok.text in "([":
                depth += 1
            elif tok.kind == "punct" and tok.text in ")]":
                depth -= 1
            elif depth == 0:
                top.append(tok)
    except LexError:
        return None
    while top and top[-1].kind == "punct" and top[-1].text == ";":
        top.pop()
    found = None
    for i in range(len(top) - 1):
        tok, name = top[i], top[i + 1]
        if tok.kind != "word" or tok.text.upper() != "FORMAT" or name.kind != "word":
            continue
        rest = top[i + 2 :]
        if not rest or (rest[0].kind == "word" and rest[0].text.upper() == "SETTINGS"):
            found = name.text
    return found


def statement_count(text: str) -> int:
    """How many statements `text` holds (top-level `;` separated, empty ones ignored)."""
    count = 0
    pending = False
    try:
        for tok in tokens(text):
            if tok.kind == "punct" and tok.text == ";":
                count += pending
                pending = False
            else:
                pending = True
    except LexError:
        return 1
    return count + pending


def strip_trailing_semicolons(text: str) -> str:
    return text.rstrip().rstrip(";").rstrip()


def _unquote(tok: Token) -> str:
    if tok.kind == "quoted" and tok.text[0] in '`"':
        q = tok.text[0]
        return tok.text[1:-1].replace(q + q, q).replace("\\" + q, q).replace("\\\\", "\\")
    return tok.text


def insert_target(target: str) -> tuple[str | None, str, str] | None:
    """Split `INSERT INTO [TABLE] [db.]table [(cols)]` into (database or None, table, the rest).

    None for what is not a plain table (`INSERT INTO FUNCTION ...`) or cannot be parsed.
    """
    try:
        toks = list(tokens(target))
    except LexError:
        return None
    words = [t.text.upper() for t in toks[:3]]
    if len(toks) < 3 or words[0] != "INSERT" or words[1] != "INTO":
        return None
    i = 2
    if words[2] == "TABLE":
        i = 3
    if i >= len(toks) or toks[i].kind not in ("word", "quoted") or toks[i].text.upper() == "FUNCTION":
        return None
    first = toks[i]
    if i + 2 < len(toks) and toks[i + 1].text == "." and toks[i + 2].kind in ("word", "quoted"):
        db: str | None = _unquote(first)
        table_tok = toks[i + 2]
        end = table_tok.end
    else:
        db, table_tok, end = None, first, first.end
    if table_tok.kind == "quoted" and table_tok.text[0] == "'":
        return None
    return db, _unquote(table_tok), target[end:].strip()
