"""The one place that decides whether a request is valid: one rule per field.

Every transport maps what this module raises (an EngineError naming the field) onto its own
error shape: the gRPC layer onto a status, the gateway onto an OpenAI 400. Nothing else in the
worker or the gateway checks the same field again, so HTTP and gRPC give the same answer.
Checks run on the caller's thread before a request is queued, never on the engine thread.

What is left to other places is only what they alone can know: the HTTP translation refuses
fields it has no wire form for, and the engine checks what needs the model (a prompt that
does not fit the context, a template that does not render, a grammar that allows no token).
A grammar's or schema's size, nesting and syntax are checked here (engine/gbnf.py,
engine/schema_check.py), against the worker's RequestLimits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from llamagrid.worker.engine.errors import invalid
from llamagrid.worker.engine.gbnf import check_gbnf
from llamagrid.worker.engine.limits import DEFAULT_LIMITS, RequestLimits
from llamagrid.worker.engine.requests import GenerationSpec, Grammar, JsonSchema, Message, Sampling
from llamagrid.worker.engine.schema_check import check_json_schema
from llamagrid.worker.engine.sessions import check_session_id

#: The most alternatives a client may ask for per token, as in the OpenAI API.
MAX_TOP_LOGPROBS = 20

#: The rule of each optional numeric sampling field: what the value must satisfy, and how the
#: error says it. Floats must also be finite.
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "max_tokens": (lambda v: v >= 1, "must be at least 1"),
    "temperature": (lambda v: 0.0 <= v <= 100.0, "must be between 0 and 100"),
    "top_p": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "top_k": (lambda v: v >= 0, "must not be negative"),
    "min_p": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    "typical_p": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "repeat_penalty": (lambda v: v > 0.0, "must be positive"),
    "repeat_last_n": (lambda v: v >= -1, "must be -1 or more"),
    "presence_penalty": (lambda v: -2.0 <= v <= 2.0, "must be between -2 and 2"),
    "frequency_penalty": (lambda v: -2.0 <= v <= 2.0, "must be between -2 and 2"),
    "top_logprobs": (
        lambda v: 0 <= v <= MAX_TOP_LOGPROBS,
        f"must be between 0 and {MAX_TOP_LOGPROBS}",
    ),
}


def check_generation(
    spec: GenerationSpec,
    n_vocab: int,
    limits: RequestLimits = DEFAULT_LIMITS,
    context_per_slot: int | None = None,
) -> None:
    """Raise an EngineError naming the first invalid field of a generation request.

    context_per_slot, when given, also bounds repeat_last_n (else the scheduler checks it).
    """
    given = [x is not None for x in (spec.prompt, spec.tokens, spec.messages)]
    if sum(given) != 1:
        raise invalid("set exactly one of prompt, tokens or messages", "input")
    if spec.messages is not None:
        check_messages(spec.messages, limits)
    elif spec.tokens is not None:
        if not spec.tokens:
            raise invalid("the prompt is empty", "prompt")
        check_token_count(len(spec.tokens), limits, "prompt")
        check_token_ids(spec.tokens, n_vocab, "prompt")
    else:
        check_text_size([spec.prompt or ""], limits, "prompt")
    check_sampling(spec.sampling, n_vocab, limits)
    if context_per_slot is not None:
        check_repeat_last_n(spec.sampling.repeat_last_n, context_per_slot)
    if spec.session is not None:
        check_session_id(spec.session.session_id)


#: A message's role or name. A chat template may build a special token out of either (Phi-3
#: writes '<|' + role + '|>'), so both hold only letters, digits, '_' and '-': they can name the
#: token the template builds, but never close it and open others ('user|>...<|system').
_ROLE_OR_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_messages(messages: Sequence[Message], limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """A conversation has at least one message and at most max_messages, each with a role (and
    maybe a name) of 1 to 64 letters, digits, '_' or '-', and all their text within
    max_prompt_bytes: checked before any template is rendered."""
    if not messages:
        raise invalid("messages must not be empty", "messages")
    if len(messages) > limits.max_messages:
        raise invalid(
            f"{len(messages)} messages given; at most {limits.max_messages} are allowed",
            "messages",
        )
    check_text_size([m.content for m in messages], limits, "messages")
    for index, message in enumerate(messages):
        if not message.role:
            param = f"messages[{index}].role"
            raise invalid(f"{param} must not be empty", param)
        for field, value in (("role", message.role), ("name", message.name)):
            if value and not _ROLE_OR_NAME.fullmatch(value):
                param = f"messages[{index}].{field}"
                raise invalid(f"{param} must be 1 to 64 letters, digits, '_' or '-'", param)


def check_sampling(s: Sampling, n_vocab: int, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Every sampling option is one a sampler can honour, within the worker's limits."""
    for name, (ok, rule) in _RULES.items():
        value = getattr(s, name)
        if value is None:
            continue
        if not (math.isfinite(value) and ok(value)):
            raise invalid(f"{name} {rule}", name)
    for token, bias in s.logit_bias.items():
        if not 0 <= token < n_vocab:
            raise invalid(f"logit_bias names token {token}, outside the vocabulary", "logit_bias")
        if not (math.isfinite(bias) and -100.0 <= bias <= 100.0):
            raise invalid("logit_bias values must be between -100 and 100", "logit_bias")
    check_stop(s.stop, limits)
    if isinstance(s.constraint, Grammar):
        check_gbnf(s.constraint.text, limits.max_grammar_bytes, limits.max_grammar_depth, n_vocab)
    elif isinstance(s.constraint, JsonSchema):
        check_json_schema(s.constraint.text, limits)


def check_stop(stop: Sequence[str], limits: RequestLimits) -> None:
    """At most max_stop_strings stop strings, none empty nor longer than max_stop_bytes."""
    if len(stop) > limits.max_stop_strings:
        raise invalid(
            f"{len(stop)} stop strings given; at most {limits.max_stop_strings} are allowed",
            "stop",
        )
    for text in stop:
        if not text:
            raise invalid("stop strings must not be empty", "stop")
        size = len(text.encode("utf-8", errors="replace"))
        if size > limits.max_stop_bytes:
            raise invalid(
                f"a stop string is {size} bytes; the limit is {limits.max_stop_bytes}", "stop"
            )


def check_repeat_last_n(value: int | None, context_per_slot: int) -> None:
    """repeat_last_n looks back at most over one request's context (-1 means all of it)."""
    if value is not None and value > context_per_slot:
        raise invalid(
            f"repeat_last_n must be at most the context per request ({context_per_slot}), "
            "or -1 for all of it",
            "repeat_last_n",
        )


def check_text_size(texts: Sequence[str], limits: RequestLimits, param: str) -> None:
    """The texts of one request hold at most max_prompt_bytes UTF-8 bytes together."""
    size = 0
    for text in texts:
        # Every character is at least one byte: a text longer than the limit is never encoded.
        size += len(text) if len(text) > limits.max_prompt_bytes else _utf8_size(text)
        if size > limits.max_prompt_bytes:
            raise invalid(f"the request's text is over {limits.max_prompt_bytes} bytes", param)


def check_token_count(count: int, limits: RequestLimits, param: str) -> None:
    """At most max_token_ids token ids in one request."""
    if count > limits.max_token_ids:
        raise invalid(f"{count} token ids given; at most {limits.max_token_ids}", param)


def check_embed_inputs(
    inputs: Sequence[str | Sequence[int]], n_vocab: int, limits: RequestLimits = DEFAULT_LIMITS
) -> None:
    """An embedding request has at least one input and at most max_embed_inputs, no input is
    empty, and its text and token ids are within the request limits."""
    if not inputs:
        raise invalid("input must not be empty", "input")
    if len(inputs) > limits.max_embed_inputs:
        raise invalid(
            f"{len(inputs)} inputs given; at most {limits.max_embed_inputs} are allowed", "input"
        )
    check_text_size([i for i in inputs if isinstance(i, str)], limits, "input")
    check_token_count(sum(len(i) for i in inputs if not isinstance(i, str)), limits, "input")
    for index, item in enumerate(inputs):
        if not item:
            raise invalid(f"input {index} is empty", "input")
        if not isinstance(item, str):
            check_token_ids(item, n_vocab, "input")


def check_token_ids(tokens: Sequence[int], n_vocab: int, param: str) -> None:
    """Every token id is in the model's vocabulary."""
    for token in tokens:
        if not 0 <= token < n_vocab:
            raise invalid(f"token id {token} is outside the vocabulary (0..{n_vocab - 1})", param)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))
