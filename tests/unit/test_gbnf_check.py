"""The GBNF check that runs before llama.cpp sees a grammar: size, nesting, syntax, expansion."""

from __future__ import annotations

import pytest
from llama_cpp.llama_grammar import (
    ARITHMETIC_GBNF,
    C_GBNF,
    CHESS_GBNF,
    JAPANESE_GBNF,
    JSON_ARR_GBNF,
    JSON_GBNF,
    LIST_GBNF,
)

from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.gbnf import check_gbnf


def check(text: str, max_bytes: int = 65536, max_depth: int = 1024) -> int:
    return check_gbnf(text, max_bytes, max_depth, n_vocab=49152).depth


def refusal(text: str, **limits: int) -> EngineError:
    with pytest.raises(EngineError) as caught:
        check(text, **limits)
    assert caught.value.reason is Reason.INVALID_VALUE
    assert caught.value.param == "grammar"
    return caught.value


@pytest.mark.parametrize(
    "grammar",
    [JSON_GBNF, JSON_ARR_GBNF, ARITHMETIC_GBNF, C_GBNF, CHESS_GBNF, JAPANESE_GBNF, LIST_GBNF],
)
def test_the_grammars_llama_cpp_ships_pass(grammar: str) -> None:
    check(grammar)


def test_depth_counting_ignores_brackets_in_literals_classes_and_comments() -> None:
    assert check('root ::= "((((" [(] [^)] "\\"(" # (((((\n') == 0
    assert check('root ::= ( "(" ( [)] | "x" ) )\n') == 2
    assert check('root ::= (\n  ( ( "a" )\n  )\n)') == 3


def test_a_million_parentheses_are_refused_without_recursion() -> None:
    deep = "root ::= " + "(" * 1_000_000 + '"a"' + ")" * 1_000_000
    assert "deeper than 1024" in refusal(deep, max_bytes=10_000_000).message
    # Were the check recursive, a nesting this deep would raise RecursionError instead.
    deep = "root ::= " + "(" * 200_000 + '"a"' + ")" * 200_000
    assert check(deep, max_bytes=10_000_000, max_depth=200_000) == 200_000


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert check("root ::= " + "(" * 50 + '"a"' + ")" * 50, max_depth=50) == 50
    assert (
        "deeper than 49" in refusal("root ::= " + "(" * 50 + '"a"' + ")" * 50, max_depth=49).message
    )


def test_a_grammar_over_the_byte_limit_is_refused_by_its_size() -> None:
    error = refusal('root ::= "' + "é" * 40 + '"', max_bytes=64)
    assert "the limit is 64" in error.message


@pytest.mark.parametrize(
    ("grammar", "why"),
    [
        ("", "defines no rule"),
        ("# only a comment\n", "defines no rule"),
        ('a ::= "x"', "no 'root' rule"),
        ("root ::= foo", "'foo' is used but not defined"),
        ('root ::= "a" \\q', "expecting a newline"),
        ('root ::= "\\q"', "unknown escape"),
        ('root ::= "\\x4"', "expecting 2 hex digits"),
        ('root ::= "abc', "unexpected end"),
        ("root ::= [a-", "unexpected end"),
        ('root ::= ( "a"', "expecting ')'"),
        ('root ::= "a" )', "expecting a newline"),
        ("root ::= *", "expecting an item before the repetition"),
        ('root ::= ""*', "expecting an item before the repetition"),
        ('root = "a"', "expecting ::="),
        ('root ::= "a"{', "expecting an integer"),
        ('root ::= "a"{2', "expecting '}'"),
        ('root ::= "a"{5,2}', "maximum is below the minimum"),  # llama.cpp would loop 2^64 times
        ('root ::= "a"{3000}', "over 2000"),
        ('root ::= "a"{0,99999999999999999999999}', "over 2000"),
        ('root ::= ("a"{0,50}){0,50}', "over 2000 rules"),
        ("root ::= <[99999]>", "not in the vocabulary"),
        ("root ::= <[1]", "expecting ']>'"),
        ("root ::= <think", "expecting '>'"),
        ('root ::= "a\0b"', "NUL"),
    ],
)
def test_what_llama_cpp_would_refuse_is_refused_here_with_a_reason(grammar: str, why: str) -> None:
    assert why in refusal(grammar).message


def test_a_refusal_does_not_quote_the_whole_grammar() -> None:
    grammar = 'root ::= "a" ' + " ".join(f'"{i:05d}"' for i in range(5000)) + " \\q"
    error = refusal(grammar)
    assert len(error.message) < 200 and "04999" not in error.message


def test_repetitions_that_would_expand_to_gigabytes_are_refused() -> None:
    grammar = 'root ::= "' + "a" * 30_000 + '"{1999}'
    assert "over 1048576 grammar elements" in refusal(grammar).message


def test_generated_rule_names_do_not_count_as_undefined() -> None:
    summary = check_gbnf('root ::= ("a" | "b")+ x?\nx ::= "c"{2,5}', 65536, 1024)
    assert summary.rules > 2


def test_tokens_by_id_and_by_name_are_accepted_and_named_ones_reported() -> None:
    summary = check_gbnf('root ::= <[5]> !<[7]> <think> "x"', 65536, 1024, n_vocab=10)
    assert summary.token_names == ["<think>"]
