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

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from llamagrid.worker.engine.chat_template import RESERVED_VARIABLES
from llamagrid.worker.engine.errors import EngineError, invalid, unsupported
from llamagrid.worker.engine.gbnf import check_gbnf
from llamagrid.worker.engine.images import image_params
from llamagrid.worker.engine.images import inspect as inspect_image
from llamagrid.worker.engine.infill import check_infill, infill_texts
from llamagrid.worker.engine.limits import DEFAULT_LIMITS, RequestLimits
from llamagrid.worker.engine.requests import (
    GenerationSpec,
    Grammar,
    JsonSchema,
    Message,
    Sampling,
    ToolCall,
    ToolChoice,
)
from llamagrid.worker.engine.schema_check import check_json_schema
from llamagrid.worker.engine.sessions import check_session_id
from llamagrid.worker.native.sampler import SAMPLER_LETTERS, sampler_name

#: The most alternatives a client may ask for per token, as in the OpenAI API.
MAX_TOP_LOGPROBS = 20
#: The most choices (n) one request may ask for, however many slots the worker has.
MAX_CHOICES = 16
#: The most parts (text and images) one chat message may have.
MAX_PARTS = 1024

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
    "mirostat": (lambda v: v in (0, 1, 2), "must be 0, 1 or 2"),
    "mirostat_tau": (lambda v: 0.0 <= v <= 100.0, "must be between 0 and 100"),
    "mirostat_eta": (lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1"),
    "dry_multiplier": (lambda v: 0.0 <= v <= 100.0, "must be between 0 and 100"),
    "dry_base": (lambda v: 1.0 <= v <= 100.0, "must be between 1 and 100"),
    "dry_allowed_length": (lambda v: v >= 0, "must not be negative"),
    "dry_penalty_last_n": (lambda v: v >= -1, "must be -1 or more"),
    "xtc_probability": (lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1"),
    "xtc_threshold": (lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1"),
    "top_n_sigma": (lambda v: -1.0 <= v <= 100.0, "must be between -1 and 100"),
    "dynatemp_range": (lambda v: 0.0 <= v <= 100.0, "must be between 0 and 100"),
    "dynatemp_exponent": (lambda v: 0.0 <= v <= 100.0, "must be between 0 and 100"),
    "min_keep": (lambda v: v >= 0, "must not be negative"),
    "adaptive_target": (lambda v: -1.0 <= v <= 1.0, "must be between -1 and 1"),
    # 0.99 as a float32 (the wire's) is a little more than 0.99
    "adaptive_decay": (lambda v: 0.0 <= v <= 0.990001, "must be between 0 and 0.99"),
}
#: DRY sequence breakers: how many a request may give, and the longest (llama.cpp would cut a
#: longer one to 40 bytes). Each costs a pass over the vocabulary when the sampler is made.
MAX_DRY_BREAKERS = 16
MAX_DRY_BREAKER_BYTES = 40


def check_generation(
    spec: GenerationSpec,
    n_vocab: int,
    limits: RequestLimits = DEFAULT_LIMITS,
    context_per_slot: int | None = None,
    slots: int | None = None,
    media_marker: str | None = None,
    model: str = "",
) -> None:
    """Raise an EngineError naming the first invalid field of a generation request.

    context_per_slot, when given, also bounds repeat_last_n (else the scheduler checks it);
    slots, when given, bounds n. media_marker is the text standing for an image in a raw
    prompt when the model reads images (None: it does not; ``model`` names it in the error).
    """
    given = [x is not None for x in (spec.prompt, spec.tokens, spec.messages, spec.infill)]
    if sum(given) != 1:
        raise invalid("set exactly one of prompt, tokens, messages or infill", "input")
    if spec.messages is not None:
        check_messages(spec.messages, limits)
    elif spec.infill is not None:
        check_infill(spec.infill)
        check_text_size(list(infill_texts(spec.infill)), limits, "infill")
    elif spec.tokens is not None:
        if not spec.tokens:
            raise invalid("the prompt is empty", "prompt")
        check_token_count(len(spec.tokens), limits, "prompt")
        check_token_ids(spec.tokens, n_vocab, "prompt")
    else:
        check_text_size([spec.prompt or ""], limits, "prompt")
    sampling = spec.sampling
    if sampling.max_tokens == 0 and (spec.echo or spec.prompt_logprobs is not None):
        sampling = dataclasses.replace(sampling, max_tokens=None)  # only the prompt is wanted
    check_sampling(sampling, n_vocab, limits)
    check_choices(spec, slots)
    check_tools(spec, limits)
    check_template_inputs(spec, limits)
    if context_per_slot is not None:
        check_repeat_last_n(spec.sampling.repeat_last_n, context_per_slot)
        check_look_back(spec.sampling.dry_penalty_last_n, context_per_slot, "dry_penalty_last_n")
    if spec.session is not None:
        check_session_id(spec.session.session_id)
    check_images(spec, limits, media_marker, model)


def check_images(
    spec: GenerationSpec, limits: RequestLimits, media_marker: str | None, model: str = ""
) -> None:
    """Images come with a raw prompt (``images``, one per media marker) or in chat messages'
    parts, only for a model that reads images, at most max_images of them, each a supported
    image within the byte and pixel limits; not with prompt_logprobs (an image position has
    no token to score). A session turn's images also count against its session's limit, which
    the engine checks (engine/sessions.py)."""
    if spec.images and spec.prompt is None:
        raise invalid(
            "images go with a raw prompt (input prompt); chat messages carry theirs in parts",
            "images",
        )
    images = spec.all_images
    if not images:
        return
    where = image_params(spec)
    field = "images" if spec.messages is None else where[0].split(".parts")[0] + ".parts"
    if media_marker is None:
        name = f"model {model}" if model else "this model"
        raise unsupported(f"{name} does not read images (its worker has no --mmproj)", field)
    if len(images) > limits.max_images:
        raise invalid(f"{len(images)} images given; at most {limits.max_images} are allowed", field)
    if spec.prompt_logprobs is not None:
        raise invalid(
            "prompt_logprobs is not supported with images: an image's positions have no "
            "token to score",
            "prompt_logprobs",
        )
    for image, param in zip(images, where, strict=True):
        inspect_image(image, limits.max_image_bytes, limits.max_image_pixels, param)
    if spec.prompt is not None:
        markers = spec.prompt.count(media_marker)
        if markers != len(images):
            raise invalid(
                f"the prompt holds {markers} media markers ({media_marker}) for "
                f"{len(images)} images: each image takes the place of one marker",
                "images",
            )


def check_choices(spec: GenerationSpec, slots: int | None = None) -> None:
    """n is 1 to MAX_CHOICES and at most the slots; prompt_logprobs 0 to MAX_TOP_LOGPROBS; echo
    only for a prompt or token ids; none of them on a session turn."""
    if spec.n is not None:
        most = MAX_CHOICES if slots is None else min(MAX_CHOICES, slots)
        if not 1 <= spec.n <= most:
            why = "" if slots is None or slots >= MAX_CHOICES else " (the worker's slots)"
            raise invalid(f"n must be between 1 and {most}{why}", "n")
    if spec.prompt_logprobs is not None and not 0 <= spec.prompt_logprobs <= MAX_TOP_LOGPROBS:
        raise invalid(
            f"prompt_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", "prompt_logprobs"
        )
    if spec.echo and (spec.messages is not None or spec.infill is not None):
        raise invalid("echo needs a prompt or token ids, not messages or infill", "echo")
    if spec.session is not None:
        for name, given in (
            ("infill", spec.infill is not None),
            ("n", spec.choices > 1),
            ("prompt_logprobs", spec.prompt_logprobs is not None),
            ("echo", spec.echo),
        ):
            if given:
                raise invalid(f"{name} is not allowed on a session turn", name)


def check_prompt_logprobs(spec: GenerationSpec, prompt_tokens: int, limits: RequestLimits) -> None:
    """A prompt whose log-probabilities are asked for has at most max_prompt_logprobs_tokens
    tokens (each costs a softmax over the vocabulary)."""
    if spec.prompt_logprobs is not None and prompt_tokens > limits.max_prompt_logprobs_tokens:
        raise invalid(
            f"the prompt has {prompt_tokens} tokens; prompt_logprobs allows at most "
            f"{limits.max_prompt_logprobs_tokens}",
            "prompt_logprobs",
        )


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
    check_text_size([text for m in messages for text in _message_texts(m)], limits, "messages")
    for index, message in enumerate(messages):
        if not message.role:
            param = f"messages[{index}].role"
            raise invalid(f"{param} must not be empty", param)
        for field, value in (("role", message.role), ("name", message.name)):
            if value and not _ROLE_OR_NAME.fullmatch(value):
                param = f"messages[{index}].{field}"
                raise invalid(f"{param} must be 1 to 64 letters, digits, '_' or '-'", param)
        if message.parts and message.content:
            param = f"messages[{index}].parts"
            raise invalid(f"messages[{index}] sets both content and parts: set one", param)
        if len(message.parts) > MAX_PARTS:
            param = f"messages[{index}].parts"
            raise invalid(f"{param} holds {len(message.parts)} parts; at most {MAX_PARTS}", param)
        _check_tool_fields(index, message)


def _message_texts(m: Message) -> list[str]:
    """The client text of a message: content (or its text parts), thinking and its calls."""
    calls = [text for c in m.tool_calls for text in (c.id, c.name, c.arguments)]
    parts = [p for p in m.parts if isinstance(p, str)]
    return [m.content, *parts, m.reasoning_content, m.tool_call_id, *calls]


def _check_tool_fields(index: int, m: Message) -> None:
    """Tool calls and thinking only on assistant turns, a call id only on tool results; names,
    ids and arguments of the right form."""
    prefix = f"messages[{index}]"
    for field, value, role in (
        ("tool_calls", m.tool_calls, "assistant"),
        ("reasoning_content", m.reasoning_content, "assistant"),
        ("tool_call_id", m.tool_call_id, "tool"),
    ):
        if value and m.role != role:
            param = f"{prefix}.{field}"
            raise invalid(f"{param} is only allowed on a message of role '{role}'", param)
    if m.tool_call_id and not _CALL_ID.fullmatch(m.tool_call_id):
        param = f"{prefix}.tool_call_id"
        raise invalid(f"{param} {_CALL_ID_RULE}", param)
    if len(m.tool_calls) > MAX_TOOL_CALLS:
        param = f"{prefix}.tool_calls"
        raise invalid(f"{param} holds {len(m.tool_calls)} calls; at most {MAX_TOOL_CALLS}", param)
    for j, call in enumerate(m.tool_calls):
        _check_call(f"{prefix}.tool_calls[{j}]", call)


def _check_call(prefix: str, call: ToolCall) -> None:
    if call.id and not _CALL_ID.fullmatch(call.id):
        raise invalid(f"{prefix}.id {_CALL_ID_RULE}", f"{prefix}.id")
    if not _TOOL_NAME.fullmatch(call.name):
        raise invalid(f"{prefix}.name {_TOOL_NAME_RULE}", f"{prefix}.name")
    if call.arguments:
        param = f"{prefix}.arguments"
        value = _json_value(call.arguments, param, "the arguments")
        if not isinstance(value, dict):
            raise invalid(f"{param} must be a JSON object", param)


#: The most tools one request may give, and the most calls one message may hold.
MAX_TOOLS = 128
MAX_TOOL_CALLS = 128
#: A function's name (a tool's, a call's).
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TOOL_NAME_RULE = "must be 1 to 64 letters, digits, '_', '-' or '.'"
#: A tool call's id. A template may write it next to its own markup, so it holds no
#: characters that could close or open a special token.
_CALL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_CALL_ID_RULE = "must be 1 to 128 letters, digits, '_', '-', '.' or ':'"
#: Deepest nesting of a tool call's arguments and of chat_template_kwargs.
MAX_JSON_DEPTH = 64
#: Longest chat_template_kwargs, in UTF-8 bytes.
MAX_TEMPLATE_KWARGS_BYTES = 65536
#: A chat template variable's name.
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: What reasoning_effort may say.
REASONING_EFFORTS = ("low", "medium", "high")


def check_tools(spec: GenerationSpec, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Tools come with chat messages, at most MAX_TOOLS of them, with distinct names and
    object schemas within the schema limits; tool_choice names one of them, and a choice that
    a grammar enforces (required, a named function) comes without a grammar of the client's."""
    if spec.tools and spec.messages is None:
        raise invalid("tools need chat messages as the input", "tools")
    if len(spec.tools) > MAX_TOOLS:
        raise invalid(f"{len(spec.tools)} tools given; at most {MAX_TOOLS} are allowed", "tools")
    texts = [t for m in spec.messages or () for t in _message_texts(m)]
    check_text_size(
        [*texts, *(t for tool in spec.tools for t in (tool.description, tool.parameters))],
        limits,
        "tools",
    )
    enforced = enforced_tools(spec)
    seen: set[str] = set()
    for i, tool in enumerate(spec.tools):
        if not _TOOL_NAME.fullmatch(tool.name):
            raise invalid(f"tools[{i}].name {_TOOL_NAME_RULE}", f"tools[{i}].name")
        if tool.name in seen:
            raise invalid(f"tools[{i}].name: two tools are named '{tool.name}'", f"tools[{i}].name")
        seen.add(tool.name)
        if tool.parameters:
            param = f"tools[{i}].parameters"
            # A schema a grammar enforces may use only what the grammar can hold the output
            # to; one that is only shown to the model may use any keyword.
            keywords = tool.name in enforced
            schema = check_json_schema(tool.parameters, limits, param, keywords=keywords)
            if schema.get("type", "object") != "object":
                raise invalid(f"{param} must be the JSON Schema of an object", param)
    if spec.tool_function is not None and spec.tool_function not in seen:
        raise invalid(
            f"tool_choice names the function '{spec.tool_function[:64]}', which is not one of "
            "the tools",
            "tool_choice",
        )
    if spec.tool_choice is ToolChoice.REQUIRED and not spec.tools:
        raise invalid("tool_choice 'required' needs tools", "tool_choice")
    if enforced and spec.sampling.constraint is not None:
        raise invalid(
            "tool_choice 'required' or a named function is enforced by a grammar of its own, "
            "so it cannot be combined with grammar, json_schema or response_format",
            "tool_choice",
        )


def enforced_tools(spec: GenerationSpec) -> frozenset[str]:
    """The tools a grammar holds the output to: every tool for tool_choice required, the named
    one for a named function, none otherwise."""
    if spec.tool_function is not None:
        return frozenset({spec.tool_function})
    if spec.tool_choice is ToolChoice.REQUIRED:
        return frozenset(t.name for t in spec.tools)
    return frozenset()


def check_template_inputs(spec: GenerationSpec, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """chat_template_kwargs is a JSON object of at most MAX_TEMPLATE_KWARGS_BYTES, nested at
    most MAX_JSON_DEPTH deep, whose keys are variable names other than the worker's own;
    reasoning_effort is low, medium or high. Both need chat messages."""
    if spec.reasoning_effort and spec.reasoning_effort not in REASONING_EFFORTS:
        raise invalid(
            "reasoning_effort must be one of " + ", ".join(REASONING_EFFORTS), "reasoning_effort"
        )
    kwargs = spec.chat_template_kwargs
    if not kwargs:
        return
    param = "chat_template_kwargs"
    if spec.messages is None:
        raise invalid(f"{param} needs chat messages as the input", param)
    size = len(kwargs) if len(kwargs) > MAX_TEMPLATE_KWARGS_BYTES else _utf8_size(kwargs)
    if size > MAX_TEMPLATE_KWARGS_BYTES:
        raise invalid(f"{param} is over {MAX_TEMPLATE_KWARGS_BYTES} bytes", param)
    value = _json_value(kwargs, param, param)
    if not isinstance(value, dict):
        raise invalid(f"{param} must be a JSON object", param)
    for key in value:
        if not _VARIABLE.fullmatch(key):
            raise invalid(
                f"{param} key '{key[:64]}' is not a variable name (a letter or '_', then up to "
                "63 letters, digits or '_')",
                param,
            )
        if key in RESERVED_VARIABLES:
            raise invalid(f"{param} cannot set '{key}': the worker sets it", param)


def _json_value(text: str, param: str, what: str) -> Any:
    """The parsed JSON text, nested at most MAX_JSON_DEPTH deep."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(param, what) from None
    except ValueError:
        raise invalid(f"{param} is not valid JSON", param) from None
    todo: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while todo:
        node, depth = todo.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(param, what)
        children = node.values() if isinstance(node, dict) else node
        todo.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return value


def _too_deep(param: str, what: str) -> EngineError:
    return invalid(f"{what} nest deeper than {MAX_JSON_DEPTH} levels", param)


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
    if s.min_keep is not None and s.min_keep > n_vocab:
        raise invalid(f"min_keep must be at most the vocabulary size ({n_vocab})", "min_keep")
    check_samplers(s.samplers)
    check_dry_breakers(s.dry_sequence_breakers)
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


def check_samplers(samplers: Sequence[str]) -> None:
    """The sampler order names each sampler at most once, by llama-server's name or letter."""
    seen: set[str] = set()
    for index, given in enumerate(samplers):
        name = sampler_name(given)
        if name is None:
            known = ", ".join(SAMPLER_LETTERS)
            raise invalid(
                f"samplers[{index}] names no sampler ({given[:40]!r}); the samplers are "
                f"{known}, or their letters {''.join(SAMPLER_LETTERS.values())}",
                "samplers",
            )
        if name == "infill":  # it compares every pair of candidates: the whole vocabulary's
            raise unsupported(  # pairs, unless top-k ran first; llamagrid serves no infill
                "samplers: infill (fill-in-the-middle) is not supported", "samplers"
            )
        if name in seen:
            raise invalid(f"samplers names {name} twice", "samplers")
        seen.add(name)


def check_dry_breakers(breakers: Sequence[str]) -> None:
    """At most MAX_DRY_BREAKERS DRY sequence breakers, each 1 to MAX_DRY_BREAKER_BYTES bytes
    without NUL (llama.cpp reads them as C strings)."""
    param = "dry_sequence_breakers"
    if len(breakers) > MAX_DRY_BREAKERS:
        raise invalid(
            f"{len(breakers)} DRY sequence breakers given; at most {MAX_DRY_BREAKERS}", param
        )
    for text in breakers:
        size = len(text.encode("utf-8", errors="replace"))
        if not 1 <= size <= MAX_DRY_BREAKER_BYTES or "\0" in text:
            raise invalid(
                f"DRY sequence breakers must be 1 to {MAX_DRY_BREAKER_BYTES} bytes, without NUL",
                param,
            )


def check_repeat_last_n(value: int | None, context_per_slot: int) -> None:
    """repeat_last_n looks back at most over one request's context (-1 means all of it)."""
    check_look_back(value, context_per_slot, "repeat_last_n")


def check_look_back(value: int | None, context_per_slot: int, param: str) -> None:
    """A look-back covers at most one request's context (-1 means all of it)."""
    if value is not None and value > context_per_slot:
        raise invalid(
            f"{param} must be at most the context per request ({context_per_slot}), "
            "or -1 for all of it",
            param,
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
