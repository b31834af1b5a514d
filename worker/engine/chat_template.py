"""Formats chat messages with a model's Jinja chat template, in a sandbox.

The Jinja environment is the one Hugging Face transformers gives chat templates (its
``utils/chat_template_utils.py``), since that is what template authors write and test against:
sandboxed and immutable, ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension
(``{% break %}``, ``{% continue %}``), a ``{% generation %}`` block that renders its body
unchanged (transformers uses it to mark assistant text for training masks), a ``tojson`` filter
that does not escape non-ASCII or HTML characters and takes ``indent``, ``separators`` and
``sort_keys``, and the globals ``raise_exception`` and ``strftime_now``.

A template receives ``messages``, ``tools`` (None when none were given, as transformers passes
it), ``add_generation_prompt``, ``bos_token``, ``eos_token``, and any extra variables of the
request (``chat_template_kwargs`` and ``reasoning_effort``).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llamagrid.worker.engine.errors import invalid

#: Used when a GGUF has no template of its own: ChatML, which many small models were tuned on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: The variables the worker itself gives a template: extra variables cannot replace them.
RESERVED_VARIABLES = frozenset(
    {
        "messages",
        "tools",
        "add_generation_prompt",
        "bos_token",
        "eos_token",
        "raise_exception",
        "strftime_now",
    }
)


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' tojson: plain json.dumps, non-ASCII kept, nothing HTML-escaped."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}``: the body, rendered as it is."""

    tags = {"generation"}  # noqa: RUF012 (Jinja reads the class attribute)

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def load_template_source(value: str) -> str:
    """A template given inline, or the contents of the file it names."""
    if value and "{" not in value and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


def make_environment() -> ImmutableSandboxedEnvironment:
    """A sandboxed Jinja environment as transformers builds it for chat templates."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True)
class CallStyle:
    """How a template wants the tool calls of an assistant turn (ChatTemplate.call_style)."""

    #: A call's arguments as JSON text, not as the parsed object.
    string_arguments: bool
    #: The content of a turn that only calls tools as None, not "".
    null_content: bool


#: What transformers-era templates want: arguments as an object, content as a string.
OBJECT_CALLS = CallStyle(string_arguments=False, null_content=False)


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML_TEMPLATE
        self._bos = bos_token
        self._eos = eos_token

    @cached_property
    def _template(self) -> Any:
        return make_environment().from_string(self.source)

    def check(self) -> None:
        """Compile the template now, so that a broken one fails at load, not per request."""
        try:
            self._template  # noqa: B018
        except TemplateError as exc:
            raise ValueError(f"the chat template does not compile: {exc}") from exc

    @cached_property
    def shows_tools(self) -> bool:
        """Whether the template reads ``tools`` at all (else it drops a request's tools)."""
        tree = make_environment().parse(self.source)
        return any(name.name == "tools" for name in tree.find_all(nodes.Name))

    @cached_property
    def call_style(self) -> CallStyle:
        """How this template wants an assistant turn that calls tools (found once, by
        rendering such a turn each way).

        Arguments: transformers-era templates dump a parsed object (``arguments | tojson``),
        older ones concatenate a string (DeepSeek-R1's ``+ arguments +``): the object is used
        unless only the string shows the arguments. Content: OpenAI clients send null when a
        turn only calls tools, and some templates render the calls only then (DeepSeek-R1
        tests ``content is none``); others fail on None (Qwen3 searches it for ``</think>``)
        or would print "None". None is used only when it renders without error, prints no
        "None", and changes the rendering.
        """
        tool = {"type": "function", "function": {"name": "probe", "parameters": {}}}

        def probe(content: str | None, arguments: Any) -> str | None:
            call: dict[str, Any] = {"id": "probe0001", "type": "function"}
            call["function"] = {"name": "probe", "arguments": arguments}
            turns: list[dict[str, Any]] = [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": content, "tool_calls": [call]},
            ]
            try:
                return self.render(turns, False, [tool])
            except Exception:  # any failure means: not this way
                return None

        def shown(text: str | None) -> bool:
            return text is not None and "probe_argument" in text

        for arguments, as_string in (
            ({"probe_argument": 1}, False),
            ('{"probe_argument": 1}', True),
        ):
            with_null, with_empty = probe(None, arguments), probe("", arguments)
            if shown(with_null) or shown(with_empty):
                null = (
                    with_null is not None
                    and with_null != with_empty
                    and with_null.count("None") == (with_empty or "").count("None")
                )
                return CallStyle(as_string, null)
        return OBJECT_CALLS

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt for the next assistant turn. Template errors become INVALID_ARGUMENT.

        ``variables`` are extra template variables (validation keeps RESERVED_VARIABLES out).
        """
        extra = {k: v for k, v in (variables or {}).items() if k not in RESERVED_VARIABLES}
        try:
            return str(
                self._template.render(
                    **extra,
                    messages=[dict(m) for m in messages],
                    tools=[dict(t) for t in tools] if tools else None,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self._bos,
                    eos_token=self._eos,
                )
            )
        except TemplateError as exc:
            raise invalid(f"the chat template rejected the messages: {exc}", "messages") from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # A template that does arithmetic or lookups on what a request sent (a string
            # where it expects a number, say) fails this request only.
            raise invalid(f"the chat template failed on the messages: {exc}", "messages") from exc
