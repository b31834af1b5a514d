"""Formats chat messages with a model's Jinja chat template, in a sandbox."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llamagrid.worker.engine.errors import invalid

#: Used when a GGUF has no template of its own: ChatML, which many small models were tuned on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def load_template_source(value: str) -> str:
    """A template given inline, or the contents of the file it names."""
    if value and "{" not in value and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML_TEMPLATE
        self._bos = bos_token
        self._eos = eos_token

    @cached_property
    def _template(self) -> Any:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        return env.from_string(self.source)

    def check(self) -> None:
        """Compile the template now, so that a broken one fails at load, not per request."""
        try:
            self._template  # noqa: B018
        except TemplateError as exc:
            raise ValueError(f"the chat template does not compile: {exc}") from exc

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt for the next assistant turn. Template errors become INVALID_ARGUMENT."""
        try:
            return str(
                self._template.render(
                    messages=[dict(m) for m in messages],
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self._bos,
                    eos_token=self._eos,
                )
            )
        except TemplateError as exc:
            raise invalid(f"the chat template rejected the messages: {exc}", "messages") from exc
