"""What a chat request gives its template, as plain JSON values: its messages in OpenAI's shape,
its tools, and extra variables; and the copies of them engine/prompts.py renders to keep client
text from becoming special tokens (every string escaped; free text replaced by a sentinel in
the skeleton rendering).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llamagrid.worker.engine.chat_template import OBJECT_CALLS, CallStyle
from llamagrid.worker.engine.requests import GenerationSpec, Message, Tool, ToolCall, ToolChoice


def message_dict(m: Message, style: CallStyle = OBJECT_CALLS) -> dict[str, Any]:
    """A message as templates receive it (OpenAI's shape). A tool call's arguments are the
    parsed object, as transformers-era templates expect (``arguments | tojson``), or the JSON
    text for templates that want it; an assistant turn that only calls tools has content ""
    or None (ChatTemplate.call_style). A thinking is given both as ``reasoning_content`` and
    as ``thinking`` (gpt-oss' name for it)."""
    content = None if style.null_content and m.tool_calls and not m.content else m.content
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [_call(c, style.string_arguments) for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.reasoning_content:
        out["reasoning_content"] = m.reasoning_content
        out["thinking"] = m.reasoning_content
    return out


def _call(c: ToolCall, as_string: bool) -> dict[str, Any]:
    arguments: Any = c.arguments or "{}"
    if not as_string:
        arguments = json.loads(arguments)
    call: dict[str, Any] = {
        "type": "function",
        "function": {"name": c.name, "arguments": arguments},
    }
    if c.id:
        call["id"] = c.id
    return call


def tool_dict(tool: Tool) -> dict[str, Any]:
    """A tool as templates receive it (OpenAI's shape); no schema means no arguments."""
    parameters = (
        json.loads(tool.parameters) if tool.parameters else {"type": "object", "properties": {}}
    )
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = parameters
    return {"type": "function", "function": function}


#: What stands for free text in the skeleton rendering: a message's content and thinking.
_FREE_TEXT = ("content", "reasoning_content", "thinking")


def skeleton_turn(turn: Mapping[str, Any], sentinel: str) -> dict[str, Any]:
    """A turn with its free text (content, thinking) replaced by the sentinel."""
    out = dict(turn)
    for key in _FREE_TEXT:
        value = out.get(key)
        if isinstance(value, str) and value.strip():
            out[key] = sentinel
    return out


def skeleton_tool(tool: Mapping[str, Any], sentinel: str) -> dict[str, Any]:
    """A tool with its description replaced by the sentinel."""
    function = dict(tool["function"])
    if str(function.get("description", "")).strip():
        function["description"] = sentinel
    return {**tool, "function": function}


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value, keys included, without recursion."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, Mapping):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)


_J = TypeVar("_J")


def map_strings(value: _J, fn: Callable[[str], str]) -> _J:
    """A copy of a JSON-like value with fn applied to every string, keys included. Nesting is
    bounded by validation (engine/validation.py, MAX_JSON_DEPTH)."""
    if isinstance(value, str):
        return fn(value)  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return {fn(k): map_strings(v, fn) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return type(value)(map_strings(v, fn) for v in value)
    return value


@dataclass(frozen=True)
class ChatInputs:
    """What a chat request gives its template besides the messages: its tools (OpenAI's shape)
    and extra variables (chat_template_kwargs, reasoning_effort), as plain JSON values."""

    tools: tuple[Mapping[str, Any], ...] = ()
    variables: Mapping[str, Any] = field(default_factory=dict)
    #: The model may call the tools (tool_choice is not "none"): a template that does not show
    #: them gets them described in a system message (engine/tool_prompt.py).
    callable_tools: bool = False

    @classmethod
    def of(cls, spec: GenerationSpec) -> ChatInputs:
        """The inputs of a validated request."""
        variables: dict[str, Any] = (
            json.loads(spec.chat_template_kwargs) if spec.chat_template_kwargs else {}
        )
        if spec.reasoning_effort:
            variables["reasoning_effort"] = spec.reasoning_effort
        callable_tools = bool(spec.tools) and spec.tool_choice is not ToolChoice.NONE
        return cls(tuple(tool_dict(t) for t in spec.tools), variables, callable_tools)


@dataclass(frozen=True)
class Conversation:
    """Turns to render with a request's inputs."""

    turns: tuple[Mapping[str, Any], ...]
    inputs: ChatInputs = field(default_factory=ChatInputs)

    def strings(self) -> Iterator[str]:
        """Every string in the turns and the inputs, keys included."""
        return strings([self.turns, self.inputs.tools, self.inputs.variables])

    def mapped(self, fn: Callable[[str], str]) -> Conversation:
        """A copy with fn applied to every string, keys included."""
        inputs = ChatInputs(
            tuple(map_strings(t, fn) for t in self.inputs.tools),
            map_strings(self.inputs.variables, fn),
        )
        return Conversation(tuple(map_strings(t, fn) for t in self.turns), inputs)

    def skeleton(self, sentinel: str) -> Conversation:
        """A copy with the free text (content, thinking, tool descriptions) replaced by the
        sentinel."""
        tools = tuple(skeleton_tool(t, sentinel) for t in self.inputs.tools)
        turns = tuple(skeleton_turn(t, sentinel) for t in self.turns)
        return Conversation(turns, ChatInputs(tools, self.inputs.variables))
