"""Recursive-descent parser: `G ('.' STEP '(' [ARG {',' ARG}] ')')*` into an AST with positions."""

from __future__ import annotations

from . import ast
from .errors import GremlinError
from .lexer import Tok, Token, tokenize

KEYWORDS = frozenset({"ASC", "DESC", "NOW", "FOREVER"})
"""Bare identifiers accepted as arguments (besides true/false)."""
MAX_NESTING = 32
"""Predicate calls nested deeper than this are a syntax error (Skydive's dialect nests two or three levels;
without a bound, a crafted query would exhaust the interpreter's recursion limit)."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def advance(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, kind: Tok, what: str) -> Token:
        t = self.tok
        if t.kind is not kind:
            raise GremlinError(f"syntax error: expected {what}, found {t.describe()}", position=t.pos)
        return self.advance()

    def query(self) -> ast.Query:
        first = self.tok
        if first.kind is not Tok.IDENT or first.text.upper() != "G":
            raise GremlinError(f"syntax error: a query starts with 'G' or 'g', found {first.describe()}",
                               position=first.pos)
        self.advance()
        steps: list[ast.StepCall] = []
        while self.tok.kind is not Tok.EOF:
            self.expect(Tok.DOT, "'.' before the next step")
            name = self.expect(Tok.IDENT, "a step name after '.'")
            self.expect(Tok.LPAREN, f"'(' after step name {name.text!r}")
            args = self.args()
            steps.append(ast.StepCall(name.text.upper(), name.text, tuple(args), name.pos))
        return ast.Query(tuple(steps), self.text)

    def args(self) -> list[ast.Arg]:
        """Arguments up to and including the closing parenthesis."""
        args: list[ast.Arg] = []
        if self.tok.kind is Tok.RPAREN:
            self.advance()
            return args
        while True:
            args.append(self.arg())
            t = self.tok
            if t.kind is Tok.COMMA:
                self.advance()
                continue
            if t.kind is Tok.RPAREN:
                self.advance()
                return args
            raise GremlinError(f"syntax error: expected ',' or ')' after an argument, found {t.describe()}",
                               position=t.pos)

    def arg(self) -> ast.Arg:
        t = self.tok
        if t.kind is Tok.STRING:
            self.advance()
            return ast.Literal(t.text, t.pos)
        if t.kind is Tok.NUMBER:
            self.advance()
            text = t.text
            if any(c in text for c in ".eE"):
                return ast.Literal(float(text), t.pos)
            return ast.Literal(int(text), t.pos)
        if t.kind is Tok.IDENT:
            self.advance()
            up = t.text.upper()
            if self.tok.kind is Tok.LPAREN:
                if self.depth >= MAX_NESTING:
                    raise GremlinError(f"syntax error: predicate calls nested more than {MAX_NESTING} deep",
                                       position=t.pos)
                self.advance()
                self.depth += 1
                call = ast.Call(up, tuple(self.args()), t.pos, t.text)
                self.depth -= 1
                return call
            if up in ("TRUE", "FALSE"):
                return ast.Literal(up == "TRUE", t.pos)
            if up in KEYWORDS:
                return ast.Keyword(up, t.pos)
            raise GremlinError(f"unknown keyword {t.text!r}: expected a string, a number, true/false, "
                               f"ASC, DESC, NOW, FOREVER or a predicate call", position=t.pos)
        raise GremlinError(f"syntax error: expected an argument, found {t.describe()}", position=t.pos)


def parse(text: str) -> ast.Query:
    """Parse a query; raises GremlinError(status 400) naming the position and what was expected."""
    return _Parser(text).query()
