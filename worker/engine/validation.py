"""The one place that decides whether a request is valid: one rule per field.

Every transport maps what this module raises (an EngineError naming the field) onto its own
error shape: the gRPC layer onto a status, the gateway onto an OpenAI 400. Nothing else in the
worker or the gateway checks the same field again, so HTTP and gRPC give the same answer.
Checks run on the caller's thread before a request is queued, never on the engine thread.

What is left to other places is only what they alone can know: the HTTP translation refuses
fields it has no wire form for, and the engine checks what needs the model (a prompt that
does not fit the context, a template or grammar that llama.cpp cannot parse).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from llamagrid.worker.engine.errors import invalid
from llamagrid.worker.engine.requests import GenerationSpec, Message, Sampling

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


def check_generation(spec: GenerationSpec, n_vocab: int) -> None:
    """Raise an EngineError naming the first invalid field of a generation request."""
    given = [x is not None for x in (spec.prompt, spec.tokens, spec.messages)]
    if sum(given) != 1:
        raise invalid("set exactly one of prompt, tokens or messages", "input")
    if spec.messages is not None:
        check_messages(spec.messages)
    elif spec.tokens is not None:
        if not spec.tokens:
            raise invalid("the prompt is empty", "prompt")
        check_token_ids(spec.tokens, n_vocab, "prompt")
    check_sampling(spec.sampling, n_vocab)


def check_messages(messages: Sequence[Message]) -> None:
    """A conversation has at least one message, each with a role."""
    if not messages:
        raise invalid("messages must not be empty", "messages")
    for index, message in enumerate(messages):
        if not message.role:
            param = f"messages[{index}].role"
            raise invalid(f"{param} must not be empty", param)


def check_sampling(s: Sampling, n_vocab: int) -> None:
    """Every sampling option is one a sampler can honour."""
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
    if any(not stop for stop in s.stop):
        raise invalid("stop strings must not be empty", "stop")


def check_embed_inputs(inputs: Sequence[str | Sequence[int]], n_vocab: int) -> None:
    """An embedding request has at least one input, and no input is empty."""
    if not inputs:
        raise invalid("input must not be empty", "input")
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
