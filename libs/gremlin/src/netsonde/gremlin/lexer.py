"""Tokens of Skydive's Gremlin dialect: identifiers, quoted strings, numbers and `( ) , .`."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
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


def tokenize(query: str) -> list[Token]:
    """Split `query` into tokens; raises GremlinError (400, with position) on an unterminated string or a
    character that has no place in the dialect."""
    out: list[Token] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c in " \t\r\n":
            i += 1
        elif c in _PUNCT:
            # a dot followed by a digit after a non-identifier is part of a number (".5")
            if c == "." and i + 1 < n and query[i + 1].isdigit() and (not out or out[-1].kind in
                                                                     (Tok.LPAREN, Tok.COMMA)):
                i = _number(query, i, out)
            else:
                out.append(Token(_PUNCT[c], c, i))
                i += 1
        elif c in "'\"":
            start, i = i, i + 1
            buf: list[str] = []
            while True:
                if i >= n:
                    raise GremlinError(f"syntax error: unterminated string starting with {c}", position=start)
                ch = query[i]
                if ch == "\\" and i + 1 < n:
                    buf.append(_ESCAPES.get(query[i + 1], "\\" + query[i + 1]))
                    i += 2
                elif ch == c:
                    i += 1
                    break
                else:
                    buf.append(ch)
                    i += 1
            out.append(Token(Tok.STRING, "".join(buf), start))
        elif c.isdigit() or (c in "+-" and i + 1 < n and (query[i + 1].isdigit() or query[i + 1] == ".")):
            i = _number(query, i, out)
        elif c.isalpha() or c == "_":
            start = i
            while i < n and (query[i].isalnum() or query[i] == "_"):
                i += 1
            out.append(Token(Tok.IDENT, query[start:i], start))
        else:
            raise GremlinError(f"syntax error: unexpected character {c!r}", position=i)
    out.append(Token(Tok.EOF, "", n))
    return out


def _number(query: str, i: int, out: list[Token]) -> int:
    start = i
    n = len(query)
    if query[i] in "+-":
        i += 1
    while i < n and (query[i].isdigit() or query[i] in ".eE" or
                     (query[i] in "+-" and query[i - 1] in "eE")):
        i += 1
    text = query[start:i]
    try:
        float(text)
    except ValueError:
        raise GremlinError(f"syntax error: malformed number {text!r}", position=start) from None
    out.append(Token(Tok.NUMBER, text, start))
    return i
