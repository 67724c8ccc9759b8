"""Tokens of Skydive's Gremlin dialect: identifiers, quoted strings, numbers and `( ) , .`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .errors import GremlinError


class Tok(Enum):
    IDENT = "identifier"
    STRING = "string"
    NUMBER = "number"
    LPAREN = "'('"
    RPAREN = "')'"
    COMMA = "','"
    DOT = "'.'"
    EOF = "end of query"


@dataclass(slots=True)
class Token:
    kind: Tok
    text: str
    """Identifier as written, string contents (unescaped) or number text."""
    pos: int

    def describe(self) -> str:
        if self.kind is Tok.EOF:
            return "end of query"
        if self.kind is Tok.STRING:
            return f"string {self.text!r}"
        return f"{self.kind.value.strip(chr(39))} {self.text!r}" if self.kind in (Tok.IDENT, Tok.NUMBER) \
            else self.kind.value


_PUNCT = {"(": Tok.LPAREN, ")": Tok.RPAREN, ",": Tok.COMMA, ".": Tok.DOT}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


_TOKEN = re.compile(r"""[ \t\r\n]*(?:
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<sq>'(?:[^'\\]|\\.)*')
  | (?P<dq>"(?:[^"\\]|\\.)*")
  | (?P<punct>[(),.])
  | (?P<end>$)
)""", re.VERBOSE | re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def tokenize(query: str) -> list[Token]:
    """Split `query` into tokens; raises GremlinError (400, with position) on an unterminated string or a
    character that has no place in the dialect."""
    out: list[Token] = []
    append = out.append
    i = 0
    match = _TOKEN.match
    while True:
        m = match(query, i)
        if m is None:
            i += len(query[i:]) - len(query[i:].lstrip(" \t\r\n"))
            c = query[i]
            if c in "'\"":
                raise GremlinError(f"syntax error: unterminated string starting with {c}", position=i)
            raise GremlinError(f"syntax error: unexpected character {c!r}", position=i)
        kind = m.lastgroup
        pos = m.start(kind)
        if kind == "ident":
            append(Token(Tok.IDENT, m.group(kind), pos))
        elif kind == "punct":
            text = m.group(kind)
            append(Token(_PUNCT[text], text, pos))
        elif kind == "sq" or kind == "dq":
            body = m.group(kind)[1:-1]
            if "\\" in body:
                body = _UNESCAPE.sub(lambda e: _ESCAPES.get(e.group(1), "\\" + e.group(1)), body)
            append(Token(Tok.STRING, body, pos))
        elif kind == "num":
            append(Token(Tok.NUMBER, m.group(kind), pos))
        else:
            append(Token(Tok.EOF, "", len(query)))
            return out
        i = m.end()
