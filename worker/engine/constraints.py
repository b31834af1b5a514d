"""Grammars and JSON schemas become llama.cpp grammar samplers off the engine thread, in time.

Turning a schema into GBNF (Python), parsing the GBNF and building llama.cpp's grammar, and
checking that some token can start the output all take time that grows with what the client
sent. The engine thread must not spend it: it decodes for everyone. So a job's constraint is
handed to a compile thread when the job is queued, and the scheduler admits the job once its
grammar is ready. A compile that runs past the time limit fails its job (INVALID_ARGUMENT);
the thread finishes in the background and the grammar is freed.

Checks that need no model (size, nesting, syntax) already ran at validation, before queueing.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from llamagrid.worker.engine.errors import EngineError, internal, invalid
from llamagrid.worker.engine.gbnf import check_gbnf
from llamagrid.worker.engine.limits import RequestLimits
from llamagrid.worker.engine.requests import Grammar, JsonSchema, ToolGrammar
from llamagrid.worker.engine.schema_check import check_json_schema
from llamagrid.worker.engine.tool_stream import tool_call_grammar
from llamagrid.worker.native.grammar import CompiledGrammar, json_schema_to_gbnf
from llamagrid.worker.native.llama_backend import Model

log = logging.getLogger(__name__)

Constraint = Grammar | JsonSchema | ToolGrammar
#: Compile threads: one grammar may compile while another waits for the first.
COMPILE_THREADS = 2


class Closeable(Protocol):
    """A native result that must be freed."""

    def close(self) -> None:
        """Free it."""


def constraint_param(constraint: Constraint) -> str:
    """The request field a constraint came from, for errors."""
    if isinstance(constraint, ToolGrammar):
        return "tools"
    return "grammar" if isinstance(constraint, Grammar) else "response_format"


def constraint_label(constraint: Constraint) -> str:
    """How errors name the grammar of a constraint."""
    if isinstance(constraint, ToolGrammar):
        return "grammar made from the tools"
    return "grammar" if isinstance(constraint, Grammar) else "grammar made from the JSON schema"


def compile_constraint(
    model: Model, constraint: Constraint, limits: RequestLimits
) -> CompiledGrammar:
    """The grammar sampler for a constraint; raises an EngineError naming the field if unusable.

    Runs on a compile thread. Everything llama.cpp is given has passed engine.gbnf first, so
    llama.cpp never parses (and prints) a broken grammar.
    """
    param, label = constraint_param(constraint), constraint_label(constraint)
    if isinstance(constraint, JsonSchema):
        check_json_schema(constraint.text, limits)
        gbnf = json_schema_to_gbnf(constraint.text)
    elif isinstance(constraint, ToolGrammar):
        gbnf = tool_call_grammar(constraint, limits)
    else:
        gbnf = constraint.text
    summary = check_gbnf(
        gbnf, limits.max_grammar_bytes, limits.max_grammar_depth, model.n_vocab, param, label
    )
    for name in summary.token_names:
        if len(model.tokenize(name, add_special=False, parse_special=True)) != 1:
            raise invalid(f"the {label} names {name[:40]!r}, which is not one token", param)
    grammar = CompiledGrammar(model, gbnf, param)
    try:
        if not grammar.allows_some_token(model.n_vocab):
            raise invalid(f"no output can satisfy the {label}: it allows no first token", param)
    except BaseException:
        grammar.close()
        raise
    return grammar


class PendingGrammar:
    """One constraint being compiled for a queued job."""

    def __init__(self, param: str, label: str, timeout_s: float) -> None:
        self.future: concurrent.futures.Future[Closeable] = concurrent.futures.Future()
        self.param, self.label, self.timeout_s = param, label, timeout_s
        #: When a compile thread took it up (the time limit runs from there).
        self.started: float | None = None
        self._taken = False

    @property
    def ready(self) -> bool:
        """Compiled, or failed."""
        return self.future.done()

    def problem(self, now: float) -> EngineError | None:
        """Why the job must fail now: its compile failed, or ran past the time limit."""
        if self.future.done():
            error = self.future.exception() if not self.future.cancelled() else None
            if error is None or isinstance(error, EngineError):
                return error
            return internal(f"compiling the {self.label} failed: {error}")
        if self.started is not None and now - self.started > self.timeout_s:
            return invalid(
                f"the {self.label} took longer than {self.timeout_s:g} s to compile", self.param
            )
        return None

    def take(self) -> Closeable:
        """The compiled grammar, whose owner the caller becomes (only once ready, without
        problem)."""
        self._taken = True
        return self.future.result(timeout=0)

    def abandon(self) -> None:
        """The job is gone: free the grammar now, or whenever its compile ends."""
        if self._taken or self.future.cancel():
            return
        self._taken = True
        self.future.add_done_callback(_close_result)


def _close_result(future: concurrent.futures.Future[Closeable]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


class GrammarCompiler:
    """Daemon threads that compile constraints (a compile stuck in C must not block exit)."""

    def __init__(
        self,
        build: Callable[[Constraint], Closeable],
        timeout_s: float,
        threads: int = COMPILE_THREADS,
    ) -> None:
        self._build = build
        self._timeout_s = timeout_s
        self._inbox: queue.SimpleQueue[tuple[Constraint, PendingGrammar] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._serve, name=f"grammar-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, constraint: Constraint) -> PendingGrammar:
        """Start compiling constraint; poll the result with PendingGrammar.problem/ready."""
        pending = PendingGrammar(
            constraint_param(constraint), constraint_label(constraint), self._timeout_s
        )
        self._inbox.put((constraint, pending))
        return pending

    @staticmethod
    def wait(pending: list[PendingGrammar], timeout_s: float) -> None:
        """Sleep until one of pending is ready, or for timeout_s."""
        futures = [p.future for p in pending]
        concurrent.futures.wait(futures, timeout_s, return_when=concurrent.futures.FIRST_COMPLETED)

    def close(self) -> None:
        """Let the threads end once they finish what they are doing."""
        for _ in self._threads:
            self._inbox.put(None)

    def _serve(self) -> None:
        while (item := self._inbox.get()) is not None:
            constraint, pending = item
            if not pending.future.set_running_or_notify_cancel():
                continue
            pending.started = time.perf_counter()
            try:
                result = self._build(constraint)
            except EngineError as exc:
                pending.future.set_exception(exc)
            except Exception as exc:  # reported to the job, not lost with the thread
                log.exception("compiling a %s failed", pending.label)
                pending.future.set_exception(exc)
            else:
                pending.future.set_result(result)
