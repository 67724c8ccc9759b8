"""Lexer and parser of the Gremlin dialect: shapes of the AST, and errors naming position and expectation."""

from __future__ import annotations

import pytest

from netsonde.gremlin import GremlinError
from netsonde.gremlin import ast
from netsonde.gremlin.lexer import Tok, tokenize
from netsonde.gremlin.parser import parse


def test_tokens_and_positions() -> None:
    toks = tokenize("G.V().Has('a\\'b', \"c\", -1.5e3, 7, .5)")
    kinds = [t.kind for t in toks]
    assert kinds[:6] == [Tok.IDENT, Tok.DOT, Tok.IDENT, Tok.LPAREN, Tok.RPAREN, Tok.DOT]
    strings = [t.text for t in toks if t.kind is Tok.STRING]
    assert strings == ["a'b", "c"]
    numbers = [(t.text, t.pos) for t in toks if t.kind is Tok.NUMBER]
    assert numbers == [("-1.5e3", 23), ("7", 31), (".5", 34)]
    assert toks[-1].kind is Tok.EOF and toks[-1].pos == 37


def test_parse_steps_arguments_and_case() -> None:
    text = "g.v().has('Name', Regex('mir.*'), 'MTU', Gt(1500), 'Up', true).Sort(DESC, 'MTU').Limit(2)"
    q = parse(text)
    assert [s.name for s in q.steps] == ["V", "HAS", "SORT", "LIMIT"]
    has = q.steps[1]
    assert has.written == "has" and has.pos == 6
    assert has.args[0] == ast.Literal("Name", 10)
    assert isinstance(has.args[1], ast.Call) and has.args[1].name == "REGEX"
    assert has.args[1].args == (ast.Literal("mir.*", text.index("'mir")),)
    assert has.args[5] == ast.Literal(True, text.index("true"))
    assert q.steps[2].args[0] == ast.Keyword("DESC", text.index("DESC"))
    assert q.steps[3].args == (ast.Literal(2, text.index("2)")),)


def test_numbers_int_and_float() -> None:
    args = parse("G.V().Range(3, 4.0)").steps[1].args
    assert [type(a.value) for a in args] == [int, float]  # type: ignore[union-attr]


def test_bare_graph() -> None:
    assert parse("G").steps == ()
    assert parse("  g  ").steps == ()


def test_whitespace_and_newlines() -> None:
    q = parse("G\n  .V()\n\t.Has( 'Name' ,\n 'eth0' )")
    assert [s.name for s in q.steps] == ["V", "HAS"]


@pytest.mark.parametrize("query, position, text", [
    ("G.V(", 4, "expected an argument, found end of query"),
    ("G.V().Has('Name' 'x')", 17, "expected ',' or ')' after an argument, found string 'x'"),
    ("G.V()..Count()", 6, "expected a step name after '.'"),
    ("G.V()Count()", 5, "expected '.' before the next step, found identifier 'Count'"),
    ("G.V.Count()", 3, "expected '(' after step name 'V'"),
    ("V()", 0, "a query starts with 'G' or 'g'"),
    ("", 0, "a query starts with 'G' or 'g', found end of query"),
    ("G.V().Has('Name)", 10, "unterminated string"),
    ("G.V().Has(\"Name)", 10, "unterminated string"),
    ("G.V().Has(Name)", 10, "unknown keyword 'Name'"),
    ("G.V()#", 5, "unexpected character '#'"),
    ("G.V().Has('a', 1.2.3)", 18, "expected ',' or ')'"),
])
def test_syntax_errors_name_position_and_expectation(query: str, position: int, text: str) -> None:
    with pytest.raises(GremlinError) as err:
        parse(query)
    assert err.value.status == 400
    assert err.value.position == position
    assert text in str(err.value)
    assert f"(at position {position})" in str(err.value)
