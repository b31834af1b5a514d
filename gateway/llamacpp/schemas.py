"""Request bodies of llama-server's native routes, as pydantic models (no gRPC, no ML imports).

Names, types and defaults follow llama.cpp's server README. Fields a body does not declare are
kept and refused by name (llamagrid.gateway.fields), as on the OpenAI routes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from llamagrid.gateway.fields import UNSET_SCHEMA
from llamagrid.gateway.lora.schemas import LoraScaleIn

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
#: The most pieces (strings and token ids) a prompt given as an array may hold.
MAX_PROMPT_ITEMS = 65536
#: The most entries of a logit_bias array.
MAX_BIAS_ENTRIES = 1024
#: The most token ids /detokenize takes.
MAX_DETOKENIZE_IDS = 65536

Int32 = Annotated[StrictInt, Field(ge=INT32_MIN, le=INT32_MAX)]
UInt32 = Annotated[StrictInt, Field(ge=0, le=UINT32_MAX)]
TokenId = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]
Number = StrictFloat | StrictInt
#: One piece of a prompt given as an array: text, or a token id.
PromptItem = StrictStr | TokenId
#: A logit_bias entry: [token id or text, bias], the bias a number or false ("never").
BiasEntry = Annotated[
    list[StrictStr | StrictInt | StrictFloat | StrictBool], Field(min_length=2, max_length=2)
]


class _Body(BaseModel):
    """A request body that keeps undeclared fields, to refuse each by name."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"additionalProperties": UNSET_SCHEMA}
    )


class MultimodalPrompt(_Body):
    """llama-server's prompt object: a text prompt and, for a model that reads images, the
    images (bare base64) that take the places of its media markers (/props), in order."""

    prompt_string: StrictStr
    multimodal_data: list[StrictStr] | None = None


class CompletionRequest(_Body):
    """POST /completion (and /completions): llama-server's native completion."""

    prompt: (
        StrictStr
        | Annotated[list[PromptItem], Field(max_length=MAX_PROMPT_ITEMS)]
        | MultimodalPrompt
    )
    #: Not llama-server's (it serves one model): routes the request like ``model`` elsewhere.
    model: StrictStr = ""
    #: -1 (the default): until end of sequence or the context is full. 0: evaluate the prompt
    #: only.
    n_predict: Annotated[StrictInt, Field(ge=-1, le=UINT32_MAX)] = -1
    n_keep: Int32 = 0
    stream: StrictBool = False
    stop: StrictStr | list[StrictStr] | None = None
    temperature: Number | None = None
    dynatemp_range: Number | None = None
    dynatemp_exponent: Number | None = None
    top_k: Int32 | None = None
    top_p: Number | None = None
    min_p: Number | None = None
    typical_p: Number | None = None
    tfs_z: Number | None = None
    repeat_penalty: Number | None = None
    repeat_last_n: Int32 | None = None
    penalize_nl: StrictBool | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    mirostat: UInt32 | None = None
    mirostat_tau: Number | None = None
    mirostat_eta: Number | None = None
    dry_multiplier: Number | None = None
    dry_base: Number | None = None
    dry_allowed_length: Int32 | None = None
    dry_penalty_last_n: Int32 | None = None
    dry_sequence_breakers: list[StrictStr] | None = None
    xtc_probability: Number | None = None
    xtc_threshold: Number | None = None
    top_n_sigma: Number | None = None
    grammar: StrictStr | None = None
    json_schema: dict[str, Any] | None = None
    #: -1 (the default) is a random seed.
    seed: Annotated[StrictInt, Field(ge=-1, le=2**64 - 1)] | None = None
    ignore_eos: StrictBool | None = None
    #: llama-server's array form ([[id or text, bias or false]]), or OpenAI's object form.
    logit_bias: (
        Annotated[list[BiasEntry], Field(max_length=MAX_BIAS_ENTRIES)]
        | Annotated[dict[str, Number | StrictBool], Field(max_length=MAX_BIAS_ENTRIES)]
        | None
    ) = None
    n_probs: Annotated[StrictInt, Field(ge=0, le=20)] = 0
    min_keep: UInt32 | None = None
    image_data: list[Any] | None = None
    id_slot: Int32 = -1
    cache_prompt: StrictBool = True
    system_prompt: StrictStr | None = None
    samplers: StrictStr | list[StrictStr] | None = None
    #: The request's own LoRA adapter scales ([{"id", "scale"}]; see "LoRA adapters").
    lora: list[LoraScaleIn] | None = None


class TokenizeRequest(_Body):
    """POST /tokenize."""

    content: StrictStr
    model: StrictStr = ""
    add_special: StrictBool = False
    with_pieces: StrictBool = False


class DetokenizeRequest(_Body):
    """POST /detokenize."""

    tokens: Annotated[list[TokenId], Field(max_length=MAX_DETOKENIZE_IDS)]
    model: StrictStr = ""


class EmbeddingRequest(_Body):
    """POST /embedding and /embeddings: ``content`` (llama-server's), or ``input`` (OpenAI's
    name, which llama-server also reads)."""

    content: StrictStr | list[StrictStr] | None = None
    input: StrictStr | list[StrictStr] | None = None
    model: StrictStr = ""
    image_data: list[Any] | None = None


class ApplyTemplateMessage(_Body):
    """One chat message of /apply-template."""

    role: StrictStr
    content: StrictStr | None = None


class ApplyTemplateRequest(_Body):
    """POST /apply-template."""

    messages: Annotated[list[ApplyTemplateMessage], Field(min_length=1, max_length=4096)]
    model: StrictStr = ""


class LlamaErrorDetail(BaseModel):
    """What went wrong, in llama-server's shape (``param`` and ``reason`` when known)."""

    code: int
    message: str
    type: str
    param: str | None = None
    reason: str | None = None


class LlamaErrorResponse(BaseModel):
    """llama-server's error body, as /health's 503 and llama-server's routes answer."""

    error: LlamaErrorDetail
