"""Request and response bodies of llama-cpp-python's server's extra routes (no gRPC, no ML
imports). Requests keep undeclared fields so that they can be refused by name
(gateway.fields)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from llamagrid.gateway.fields import UNSET_SCHEMA
from llamagrid.gateway.openai.schemas import INT32_MAX, INT32_MIN

#: A token id as llama-cpp-python's routes take it (the worker says whether the model has it).
TokenId = Annotated[StrictInt, Field(ge=INT32_MIN, le=INT32_MAX)]


class _Body(BaseModel):
    """A request body whose undeclared fields are kept, to be refused by name."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"additionalProperties": UNSET_SCHEMA}
    )


class TokenizeInputRequest(_Body):
    """POST /extras/tokenize and /extras/tokenize/count."""

    model: StrictStr | None = Field(
        None, description="The model whose tokenizer to use; empty: the only model served."
    )
    input: StrictStr = Field(description="The text to tokenize.")


class TokenizeInputResponse(BaseModel):
    """The token ids of the input."""

    tokens: list[int]


class TokenizeInputCountResponse(BaseModel):
    """How many tokens the input has."""

    count: int


class DetokenizeInputRequest(_Body):
    """POST /extras/detokenize."""

    model: StrictStr | None = Field(
        None, description="The model whose tokenizer to use; empty: the only model served."
    )
    tokens: list[TokenId] = Field(description="The token ids to turn back into text.")


class DetokenizeInputResponse(BaseModel):
    """The text of the tokens."""

    text: str


#: Copilot's request fields that cannot change the completion (README, "llama-cpp-python's
#: server"): ``extra`` (the editor's language and indentation hints, and token counts) and
#: ``nwo`` (the repository's owner/name). Each is accepted at the values its check allows.
COPILOT_EXTRA_KEYS = frozenset(
    ("language", "next_indent", "trim_by_indentation", "prompt_tokens", "suffix_tokens")
)
#: The longest string Copilot's no-op fields may hold.
COPILOT_LABEL_CHARS = 512


def copilot_extra(value: object) -> bool:
    """Copilot's ``extra``: an object of its known hints, each a short string, a number or a
    boolean."""
    return (
        isinstance(value, dict)
        and value.keys() <= COPILOT_EXTRA_KEYS
        and all(_scalar(item) for item in value.values())
    )


def copilot_label(value: object) -> bool:
    """Copilot's ``nwo``: a short string."""
    return isinstance(value, str) and len(value) <= COPILOT_LABEL_CHARS


def _scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= COPILOT_LABEL_CHARS
    return value is None or isinstance(value, bool | int | float)
