"""Which tool-call and reasoning format a model writes, judged from its chat template.

A template that renders past tool calls writes them in the model's own markup, so the markup in
its source names the format. The tests are llama.cpp's (common/chat.cpp), in its order: DeepSeek's
call-block marker first (its templates also hold other markers), Hermes' ``<tool_call>``,
harmony's ``<|channel|>``, Mistral's ``[TOOL_CALLS]``, and Llama 3's ``ipython`` role. A template
with none of them gets the generic JSON format.
"""

from __future__ import annotations

from llamagrid.worker.engine.parsing.markup import DEEPSEEK_OPENERS

#: The tool-call formats: see the package docstring for where each is described.
TOOL_FORMATS = ("hermes", "llama3", "mistral", "deepseek", "gpt-oss", "generic")
#: The reasoning formats: ``<think>...</think>``, and harmony's analysis channel.
REASONING_FORMATS = ("think", "gpt-oss")

_TOOL_MARKERS = (
    (DEEPSEEK_OPENERS[0], "deepseek"),
    ("<tool_call>", "hermes"),
    ("<|channel|>", "gpt-oss"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|start_header_id|>ipython<|end_header_id|>", "llama3"),
    ("<|python_tag|>", "llama3"),
)


def tool_format_of(template_source: str) -> str:
    """The tool-call format of the model whose chat template this is ("generic" if unknown)."""
    for marker, name in _TOOL_MARKERS:
        if marker in template_source:
            return name
    return "generic"


def chosen_tool_format(setting: str, template_source: str) -> str:
    """The tool-call format a worker reads answers in: --tool-call-format, unless it is "auto",
    else the template's."""
    return tool_format_of(template_source) if setting == "auto" else setting


def reasoning_format_of(template_source: str) -> str | None:
    """The reasoning format of the model whose chat template this is, or None if it has none."""
    if "<|channel|>" in template_source:
        return "gpt-oss"
    if "<think>" in template_source or "</think>" in template_source:
        return "think"
    return None
