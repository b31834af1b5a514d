"""GBNF grammars that force a model to call tools, in its own markup, with valid arguments.

``tool_grammar`` serves ``tool_choice: "required"`` (any of the tools; several calls when
``parallel``) and a named function (``name``: that tool only). Each tool's parameters schema goes
through the worker's JSON-schema converter; its rules are renamed with a per-tool prefix
(``t0-``, ``t1-`` ...) so that several schemas live in one grammar, except the converter's
primitive rules (``space``, ``string``, ``value`` ...), which are the same in every schema and
are written once. The format's markup around the arguments is written exactly as the model's
template renders past calls:

- hermes: ``<tool_call>\\n{"name": "f", "arguments": ARGS}\\n</tool_call>``, newline-separated;
- llama3: ``{"name": "f", "parameters": ARGS}``, newline-separated;
- mistral: ``[TOOL_CALLS][{"name": "f", "arguments": ARGS}, ...]`` or ``[TOOL_CALLS]f[ARGS]ARGS``
  repeated (both are allowed: the model takes the form it was trained on);
- deepseek: R1's call (``<call begin>function<sep>f``, then ARGS in a json code fence, then
  ``<call end>``) or V3.1's (``<call begin>f<sep>ARGS<call end>``), between the calls-begin
  and calls-end markers, newline-separated;
- gpt-oss: an optional analysis message, then
  ``<|channel|>commentary to=functions.f <|constrain|>json<|message|>ARGS`` (one call: the
  ``<|call|>`` after it ends the generation, and a grammar cannot write an end-of-generation
  token, so the model does);
- generic: ``{"tool_calls": [{"name": "f", "arguments": ARGS}, ...]}``.

With ``reasoning="think"`` the grammar lets the model think first: an optional
``<think>...</think>`` block, or, with ``thinking_open``, reasoning text up to ``</think>``.
The thinking is not bounded by the grammar (only by the request's token limit), and its text
may not hold ``</think>`` before its end.

Each tool's schema is checked against the request limits (size, depth, counts, keywords) before
it is converted, and the whole grammar against the grammar limits, here rather than later: the
error then names ``tools``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llamagrid.worker.engine.errors import EngineError, invalid
from llamagrid.worker.engine.gbnf import check_gbnf
from llamagrid.worker.engine.limits import DEFAULT_LIMITS, RequestLimits
from llamagrid.worker.engine.parsing.markup import deepseek_marker
from llamagrid.worker.engine.schema_check import check_json_schema
from llamagrid.worker.native.grammar import json_schema_to_gbnf

#: What a tool's name may be (OpenAI's rule, plus dots).
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
#: The converter's primitive rules: the same text in every schema's grammar, so shared.
_SHARED = frozenset(
    {
        "array",
        "boolean",
        "char",
        "date",
        "date-string",
        "date-time",
        "date-time-string",
        "decimal-part",
        "dot",
        "integer",
        "integral-part",
        "null",
        "number",
        "object",
        "space",
        "string",
        "time",
        "time-string",
        "uuid",
        "value",
    }
)
#: One token of a GBNF rule body: a literal, a class, a repetition count, a token, or a word.
_BODY_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[^}]*\}|<[^>]*>|[A-Za-z0-9-]+|.', re.S
)
_WORD = re.compile(r"[A-Za-z0-9-]+\Z")
#: Any text up to (not including) "</think>".
_THINK_TEXT = (
    '( [^<] | "<" [^/] | "</" [^t] | "</t" [^h] | "</th" [^i] | "</thi" [^n] '
    '| "</thin" [^k] | "</think" [^>] )*'
)
#: Any text without "<|": what an analysis message holds before its "<|end|>".
_HARMONY_TEXT = '( [^<] | "<" [^|] )*'
_PARAM = "tools"


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call."""

    name: str
    description: str = ""
    #: A JSON schema of the arguments object (empty: no parameters).
    parameters: dict[str, Any] = field(default_factory=dict)


def tool_grammar(
    tool_format: str,
    tools: Sequence[ToolSpec],
    *,
    name: str | None,
    parallel: bool,
    reasoning: str | None = None,
    thinking_open: bool = False,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> str:
    """A grammar forcing one call (several if parallel) of the tools, or of the one named.

    Raises EngineError (INVALID_VALUE, param "tools" or "tool_choice") for a tool whose name or
    schema cannot be used, or a name that is not one of the tools.
    """
    if not tools:
        raise invalid("tool_choice requires at least one tool", "tool_choice")
    chosen = [t for t in tools if name is None or t.name == name]
    if not chosen:
        raise invalid(f"tool_choice names {name!r}, which is not one of the tools", "tool_choice")
    shared: dict[str, str] = {}
    rules: dict[str, str] = {}
    calls: list[tuple[str, str]] = []  # (name, rule of its arguments)
    for index, tool in enumerate(chosen):
        if not TOOL_NAME.match(tool.name):
            raise invalid(
                f"tool name {tool.name[:80]!r} is not 1-64 letters, digits, _ . -", _PARAM
            )
        args_rule = _add_schema(rules, shared, f"t{index}-", tool, limits)
        calls.append((tool.name, args_rule))
    rules.update(shared)
    if tool_format not in _FORMATS:
        raise ValueError(f"unknown tool format {tool_format!r}")
    root = _FORMATS[tool_format](rules, calls, parallel)
    prefix = _reasoning_prefix(rules, tool_format, reasoning, thinking_open)
    rules["root"] = f"{prefix}( {root} )"
    text = "\n".join(f"{rule} ::= {body}" for rule, body in rules.items()) + "\n"
    label = "grammar the tools make"
    check_gbnf(text, limits.max_grammar_bytes, limits.max_grammar_depth, param=_PARAM, label=label)
    return text


def _schema_of(tool: ToolSpec) -> dict[str, Any]:
    schema = dict(tool.parameters) if tool.parameters else {"type": "object", "properties": {}}
    if schema.setdefault("type", "object") != "object":
        raise invalid(f"the parameters of tool {tool.name!r} must be an object schema", _PARAM)
    return schema


def _add_schema(
    rules: dict[str, str],
    shared: dict[str, str],
    prefix: str,
    tool: ToolSpec,
    limits: RequestLimits,
) -> str:
    """Add a tool's argument rules; return the name of the rule for its arguments object."""
    text = json.dumps(_schema_of(tool))
    try:
        check_json_schema(text, limits, _PARAM)
        gbnf = json_schema_to_gbnf(text)
    except EngineError as exc:
        raise EngineError(exc.reason, f"tool {tool.name!r}: {exc.message}", _PARAM) from None
    own = dict(line.split(" ::= ", 1) for line in gbnf.splitlines() if line)
    names = {rule: rule if rule in _SHARED else prefix + rule for rule in own}
    renamed = {names[rule]: _rename(body, names) for rule, body in own.items()}
    if any(rule in shared and shared[rule] != renamed[rule] for rule in _SHARED & renamed.keys()):
        names = {rule: prefix + rule for rule in own}  # a primitive unlike the others: keep apart
        renamed = {names[rule]: _rename(body, names) for rule, body in own.items()}
    for rule, body in renamed.items():
        (shared if rule in _SHARED else rules)[rule] = body
    return names["root"]


def _rename(body: str, names: dict[str, str]) -> str:
    """The body with each reference to a rule renamed (literals and classes left alone)."""
    return "".join(
        names.get(token, token) if _WORD.match(token) else token
        for token in _BODY_TOKEN.findall(body)
    )


def lit(text: str) -> str:
    """A GBNF literal matching text exactly."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif ord(c) < 0x20:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _choice(rules: dict[str, str], rule: str, bodies: list[str]) -> str:
    rules[rule] = " | ".join(f"( {body} )" for body in bodies)
    return rule


def _repeat(one: str, separator: str, parallel: bool) -> str:
    return f"{one} ( {lit(separator)} {one} )*" if parallel else one


def _opening(name: str, key: str) -> str:
    """The JSON text of a call object up to its arguments."""
    return '{"name": "' + name + '", "' + key + '": '


def _hermes(rules: dict[str, str], calls: list[tuple[str, str]], parallel: bool) -> str:
    bodies = [
        lit("<tool_call>\n" + _opening(name, "arguments")) + f" {args} " + lit("}\n</tool_call>")
        for name, args in calls
    ]
    return _repeat(_choice(rules, "tool-call", bodies), "\n", parallel)


def _llama3(rules: dict[str, str], calls: list[tuple[str, str]], parallel: bool) -> str:
    bodies = [lit(_opening(name, "parameters")) + f' {args} "}}"' for name, args in calls]
    return _repeat(_choice(rules, "tool-call", bodies), "\n", parallel)


def _mistral(rules: dict[str, str], calls: list[tuple[str, str]], parallel: bool) -> str:
    items = [lit(_opening(name, "arguments")) + f' {args} "}}"' for name, args in calls]
    item = _choice(rules, "tool-item", items)
    named = [lit("[TOOL_CALLS]" + name + "[ARGS]") + f" {args}" for name, args in calls]
    one_named = _choice(rules, "tool-named", named)
    array = lit("[TOOL_CALLS][") + f" {_repeat(item, ', ', parallel)} " + lit("]")
    return f"( {array} ) | ( {one_named}{'+' if parallel else ''} )"


def _deepseek(rules: dict[str, str], calls: list[tuple[str, str]], parallel: bool) -> str:
    begin, sep, end = (deepseek_marker(w) for w in ("tool call begin", "tool sep", "tool call end"))
    bodies = []
    for name, args in calls:
        r1_head = begin + "function" + sep + name + "\n```json\n"
        bodies.append(lit(r1_head) + f" {args} " + lit("\n```" + end))
        bodies.append(lit(begin + name + sep) + f" {args} " + lit(end))
    one = _choice(rules, "tool-call", bodies)
    calls_begin, calls_end = deepseek_marker("tool calls begin"), deepseek_marker("tool calls end")
    return f"{lit(calls_begin)} {_repeat(one, chr(10), parallel)} {lit(calls_end)}"


def _gpt_oss(rules: dict[str, str], calls: list[tuple[str, str]], parallel: bool) -> str:
    rules["analysis"] = (
        f'"<|channel|>analysis<|message|>" {_HARMONY_TEXT} "<|end|><|start|>assistant"'
    )
    heads = [
        lit("<|channel|>commentary to=functions." + name + " <|constrain|>json<|message|>")
        + f" {args}"
        for name, args in calls
    ]
    return "analysis? " + _choice(rules, "tool-call", heads)


def _generic(rules: dict[str, str], calls: list[tuple[str, str]], parallel: bool) -> str:
    items = [lit(_opening(name, "arguments")) + f' {args} "}}"' for name, args in calls]
    item = _choice(rules, "tool-item", items)
    return lit('{"tool_calls": [') + f" {_repeat(item, ', ', parallel)} " + lit("]}")


_FORMATS = {
    "hermes": _hermes,
    "llama3": _llama3,
    "mistral": _mistral,
    "deepseek": _deepseek,
    "gpt-oss": _gpt_oss,
    "generic": _generic,
}


def _reasoning_prefix(
    rules: dict[str, str], tool_format: str, reasoning: str | None, thinking_open: bool
) -> str:
    if reasoning != "think" or tool_format == "gpt-oss":
        return ""
    rules["think-text"] = _THINK_TEXT
    rules["think-end"] = '"</think>" [ \\n]{0,8}'
    if thinking_open:
        return '"<think>"? think-text think-end '
    return '( "<think>" think-text think-end )? '
