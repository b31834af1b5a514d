"""Tools described to a model whose chat template does not show them.

A template that never reads ``tools`` (SmolLM2's ChatML, Gemma 2, Phi-3.5) drops the tools a
request gives: in ``auto`` mode the model could never call one. As llama.cpp does for such
models (its "generic" format), the tools, and the JSON that calls them, are then described in
a system message: added to the conversation's first message when that is a system message of
plain text, else put before it. The answer is read in the generic format (engine/parsing:
``{"tool_calls": [...]}``, or plain text). The description is built from the client's tools,
so it is client text: it is escaped like any message (engine/prompts.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from llamagrid.worker.engine.requests import Message

_INTRO = "You can call the following tools. Each one is given with a JSON Schema of its arguments."
_HOW = (
    "To call tools, answer with this JSON alone, nothing before or after it:\n"
    '{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}\n'
    "Otherwise, answer in plain text."
)


def tool_description(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system text that describes ``tools`` (OpenAI's shape) and how to call them."""
    described = [
        {
            "name": t["function"]["name"],
            **({"description": d} if (d := t["function"].get("description")) else {}),
            "parameters": t["function"]["parameters"],
        }
        for t in tools
    ]
    listing = json.dumps(described, ensure_ascii=False, indent=2)
    return f"{_INTRO}\n\n{listing}\n\n{_HOW}"


def with_tools_described(
    messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]
) -> tuple[Message, ...]:
    """The messages with the tools' description in their system message."""
    text = tool_description(tools)
    first = messages[0] if messages else None
    if first is not None and first.role == "system" and not first.parts:
        joined = f"{first.content}\n\n{text}" if first.content else text
        return (dataclasses.replace(first, content=joined), *messages[1:])
    return (Message("system", text), *messages)
