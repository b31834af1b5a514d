"""JSON schemas become grammars of valid JSON; grammars compile off the engine thread, in time."""

from __future__ import annotations

import json
import threading
import time

import pytest

from llamagrid.worker.engine.constraints import GrammarCompiler, PendingGrammar
from llamagrid.worker.engine.errors import EngineError, Reason, invalid
from llamagrid.worker.engine.gbnf import check_gbnf
from llamagrid.worker.engine.requests import Grammar, JsonSchema
from llamagrid.worker.native.grammar import json_schema_to_gbnf


def rules(schema: object) -> dict[str, str]:
    gbnf = json_schema_to_gbnf(json.dumps(schema))
    check_gbnf(gbnf, 65536, 1024)  # what the converter writes is always valid GBNF
    return dict(line.split(" ::= ", 1) for line in gbnf.splitlines())


def test_a_json_string_character_is_never_a_raw_control_character() -> None:
    char = rules({"type": "object"})["char"]
    assert char.startswith(r'[^"\\\x00-\x1F] | "\\"')


def test_constants_keep_their_json_escapes() -> None:
    root = rules({"enum": ['a"b', "c\\d", "\x01", "é"]})["root"]
    # Each GBNF literal, unescaped once by llama.cpp, is json.dumps of the value.
    assert root == r'"\"a\\\"b\"" | "\"c\\\\d\"" | "\"\\u0001\"" | "\"\\u00e9\""'


def test_a_pattern_dot_and_negated_class_exclude_what_json_escapes() -> None:
    found = rules({"type": "string", "pattern": "^[a-z]+.[^,]*$"})
    assert found["dot"] == r'[^"\\\x00-\x1F]'
    assert r'[^"\\\x00-\x1F,]*' in found["root"]


@pytest.mark.parametrize("pattern", ["^[ -~]+$", "^a\\nb$", '^say "hi"$', "^a\\\\b$", "^\\x01$"])
def test_a_pattern_that_names_a_character_json_escapes_is_refused(pattern: str) -> None:
    with pytest.raises(EngineError) as caught:
        json_schema_to_gbnf(json.dumps({"type": "string", "pattern": pattern}))
    assert caught.value.param == "response_format"


def test_the_largest_counts_allowed_make_a_grammar_within_the_grammar_limits() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 500, "maxLength": 500},
            "t": {"type": "string", "maxLength": 500},
            "a": {"type": "array", "items": {"type": "integer"}, "maxItems": 500},
            "p": {"type": "string", "pattern": "^(a{0,500}){0,500}$"},
        },
    }
    gbnf = json_schema_to_gbnf(json.dumps(schema))
    assert check_gbnf(gbnf, 65536, 1024).depth == 501  # an array nests one more


class Native:
    """A stand-in for a compiled grammar: records whether it was freed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def wait_ready(pending: PendingGrammar) -> None:
    GrammarCompiler.wait([pending], 30)
    assert pending.ready


def test_a_compiled_grammar_is_handed_over_once() -> None:
    compiler = GrammarCompiler(lambda c: Native(), timeout_s=5)
    pending = compiler.submit(Grammar("root ::= x"))
    wait_ready(pending)
    assert pending.problem(time.perf_counter()) is None
    native = pending.take()
    pending.abandon()  # the slot's sampler owns it now
    assert isinstance(native, Native) and not native.closed
    compiler.close()


def test_a_compile_past_the_time_limit_fails_its_job_and_is_freed_when_it_ends() -> None:
    release, built = threading.Event(), Native()

    def slow(constraint: Grammar | JsonSchema) -> Native:
        release.wait(30)
        return built

    compiler = GrammarCompiler(slow, timeout_s=0.05)
    pending = compiler.submit(JsonSchema("{}"))
    while pending.started is None:
        time.sleep(0.01)
    problem = pending.problem(pending.started + 1.0)
    assert problem is not None and problem.reason is Reason.INVALID_VALUE
    assert problem.param == "response_format" and "longer than 0.05 s" in problem.message
    pending.abandon()
    release.set()
    wait_ready(pending)
    for _ in range(100):
        if built.closed:
            break
        time.sleep(0.01)
    assert built.closed
    compiler.close()


def test_a_compile_error_is_the_jobs_error_and_a_crash_is_internal() -> None:
    def build(constraint: Grammar | JsonSchema) -> Native:
        if isinstance(constraint, Grammar):
            raise invalid("no first token", "grammar")
        raise RuntimeError("boom")

    compiler = GrammarCompiler(build, timeout_s=5)
    refused, crashed = compiler.submit(Grammar("g")), compiler.submit(JsonSchema("{}"))
    wait_ready(refused)
    wait_ready(crashed)
    now = time.perf_counter()
    first, second = refused.problem(now), crashed.problem(now)
    assert first is not None and first.param == "grammar"
    assert second is not None and second.reason is Reason.INTERNAL
    compiler.close()


def test_a_job_that_leaves_before_its_compile_starts_is_never_compiled() -> None:
    release, calls = threading.Event(), []

    def build(constraint: Grammar | JsonSchema) -> Native:
        calls.append(constraint)
        release.wait(30)
        return Native()

    compiler = GrammarCompiler(build, timeout_s=5, threads=1)
    busy = compiler.submit(Grammar("first"))
    gone = compiler.submit(Grammar("second"))
    gone.abandon()
    release.set()
    wait_ready(busy)
    time.sleep(0.05)
    assert calls == [Grammar("first")] and gone.future.cancelled()
    compiler.close()
