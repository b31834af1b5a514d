"""Translation of llama-server's /completion body into a llamagrid.v1 Generate call.

Every option of llama-server's README is honoured (mapped onto SamplingParams) or refused with
a 400 ``unsupported_parameter`` naming it; options whose default is all llamagrid does
(``cache_prompt: true``, ``id_slot: -1``, ``n_keep: 0``, ``penalize_nl: true``, ``tfs_z: 1``)
are accepted at that value only. Text the worker must tokenize (the strings of a prompt given
as a mixed array, the string keys of ``logit_bias``) goes through ``Tokenizer``, a Tokenize call
on a worker of the model.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from llamagrid.gateway.errors import invalid_request, unsupported
from llamagrid.gateway.fields import refuse_undeclared
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.llamacpp.schemas import INT32_MAX, CompletionRequest, MultimodalPrompt
from llamagrid.gateway.lora.translate import request_lora
from llamagrid.gateway.sampling import copy_plain
from llamagrid.v1 import inference_pb2 as pb

#: Tokenizes a text for the model: (text, add_special) -> token ids.
Tokenizer = Callable[[str, bool], Awaitable[list[int]]]

#: The bias that ``false`` ("never") becomes: the most negative the contract allows.
NEVER_BIAS = -100.0
#: The most texts of one request the gateway tokenizes (prompt pieces and logit_bias keys).
MAX_TEXTS = 64
#: The most token ids a logit_bias text may expand to.
MAX_BIAS_TOKENS = 4096
_UINT64_MASK = (1 << 64) - 1
#: Why the old ``image_data`` (with ``[img-N]`` in the prompt) is refused, and what to send.
IMAGE_DATA_REFUSED = (
    "image_data and [img-N] markers are not supported: send the prompt as "
    '{"prompt_string": "... <media marker> ...", "multimodal_data": ["<base64>"]}, with the '
    "media marker that /props reports."
)


def new_id() -> str:
    """The request id of a /completion call."""
    return f"llamacpp-{uuid.uuid4().hex}"


async def completion_request(
    body: CompletionRequest, tokenize: Tokenizer, images: Sequence[LoadedImage] = ()
) -> pb.GenerateRequest:
    """The Generate call for a /completion body; ``images`` are its prompt object's
    ``multimodal_data``, decoded by the route (gateway.images), one for each entry."""
    _refuse_unsupported(body)
    proto = pb.GenerateRequest(
        model=body.model, sampling=sampling_params(body), request_id=new_id()
    )
    sampling = proto.sampling  # the proto's own copy: edits below must reach it
    budget = _Budget()
    if isinstance(body.prompt, MultimodalPrompt):
        if len(images) != len(body.prompt.multimodal_data or ()):
            raise AssertionError("the route decodes every entry of multimodal_data")
        proto.prompt = body.prompt.prompt_string
        proto.images.extend(pb.Image(data=i.data, mime_type=i.mime_type) for i in images)
    else:
        await _prompt(body.prompt, proto, tokenize, budget)
    sampling.logit_bias.update(await logit_bias(body.logit_bias, tokenize, budget))
    if body.n_predict == 0:
        # The prompt only: the worker evaluates it and generates nothing (its echo path).
        proto.echo = True
        sampling.max_tokens = 0
    request_lora(body.lora, proto)
    refuse_undeclared(body)
    return proto


def _refuse_unsupported(body: CompletionRequest) -> None:
    """The options llamagrid cannot honour, refused at any value other than their default."""
    if body.n_keep != 0:
        raise unsupported("n_keep", "n_keep is not supported: llamagrid never shifts context.")
    if body.id_slot != -1:
        raise unsupported("id_slot", "id_slot must be -1: the gateway chooses slots.")
    if not body.cache_prompt:
        raise unsupported(
            "cache_prompt", "cache_prompt must be true: llamagrid always reuses cached prefixes."
        )
    if body.penalize_nl is False:
        raise unsupported("penalize_nl", "penalize_nl must be true: newlines are penalized.")
    if body.tfs_z is not None and body.tfs_z != 1:
        raise unsupported("tfs_z", "Tail-free sampling is not supported: tfs_z must be 1.")
    if body.system_prompt:
        raise unsupported("system_prompt")
    if body.image_data:
        raise unsupported("image_data", IMAGE_DATA_REFUSED)


def sampling_params(body: CompletionRequest) -> pb.SamplingParams:
    """The sampling options of a /completion body."""
    sampling = pb.SamplingParams()
    copy_plain(body, sampling)
    if body.n_predict > 0:
        sampling.max_tokens = body.n_predict
    if body.seed is not None and body.seed != -1:
        sampling.seed = body.seed & _UINT64_MASK
    if body.stop is not None:
        sampling.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
    if body.n_probs:
        sampling.top_logprobs = body.n_probs
    if body.grammar is not None and body.json_schema is not None:
        raise invalid_request("grammar and json_schema exclude each other.", "json_schema")
    if body.grammar is not None:
        sampling.grammar = body.grammar
    if body.json_schema is not None:
        try:
            sampling.json_schema = json.dumps(body.json_schema, allow_nan=False)
        except ValueError:
            raise invalid_request("json_schema holds a number JSON cannot carry.") from None
    if body.samplers is not None:
        if not body.samplers:
            raise invalid_request("samplers must name at least one sampler.", "samplers")
        sampling.samplers.extend(list(body.samplers))
    if body.dry_sequence_breakers is not None:
        if not body.dry_sequence_breakers:
            raise invalid_request(
                "dry_sequence_breakers must be a non-empty array.", "dry_sequence_breakers"
            )
        sampling.dry_sequence_breakers.extend(body.dry_sequence_breakers)
    return sampling


class _Budget:
    """Counts the texts a request has the gateway tokenize (at most MAX_TEXTS)."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, param: str) -> None:
        self.used += 1
        if self.used > MAX_TEXTS:
            raise invalid_request(
                f"The request has more than {MAX_TEXTS} texts to tokenize.", param
            )


async def _prompt(
    prompt: str | Sequence[str | int],
    proto: pb.GenerateRequest,
    tokenize: Tokenizer,
    budget: _Budget,
) -> None:
    """A string is the prompt as is; an array of token ids and strings is one prompt, each
    string tokenized (with the model's BOS when the array starts with a string, as
    llama-server does)."""
    if isinstance(prompt, str):
        proto.prompt = prompt
        return
    if not prompt:
        raise invalid_request("prompt must not be empty.", "prompt")
    ids: list[int] = []
    for index, item in enumerate(prompt):
        if isinstance(item, str):
            budget.take("prompt")
            ids.extend(await tokenize(item, index == 0))
        else:
            ids.append(item)
    proto.tokens.ids.extend(ids)


async def logit_bias(
    bias: list[list[Any]] | dict[str, Any] | None, tokenize: Tokenizer, budget: _Budget
) -> dict[int, float]:
    """llama-server's ``logit_bias``: [[token id or text, bias]] (a text's every token gets the
    bias; ``false`` means never) or an object keyed by token id."""
    if bias is None:
        return {}
    entries: list[tuple[Any, Any]] = (
        list(bias.items()) if isinstance(bias, dict) else [(e[0], e[1]) for e in bias]
    )
    result: dict[int, float] = {}
    for index, (key, value) in enumerate(entries):
        param = f"logit_bias[{index}]"
        amount = _bias_value(value, param)
        for token in await _bias_tokens(key, isinstance(bias, dict), tokenize, budget, param):
            result[token] = amount
    return result


def _bias_value(value: object, param: str) -> float:
    if value is False:
        return NEVER_BIAS
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_request(f"{param}: a bias is a number or false.", "logit_bias")
    if not math.isfinite(value):
        raise invalid_request(f"{param}: a bias must be a finite number.", "logit_bias")
    return float(value)


async def _bias_tokens(
    key: object, keyed_object: bool, tokenize: Tokenizer, budget: _Budget, param: str
) -> list[int]:
    if keyed_object:  # OpenAI's form: the keys are token ids written as strings
        text = str(key)
        try:
            key = int(text)
        except ValueError:
            raise invalid_request(
                f"{param}: {text[:64]!r} is not a token id.", "logit_bias"
            ) from None
    if isinstance(key, bool | float):
        raise invalid_request(f"{param}: a key is a token id or a text.", "logit_bias")
    if isinstance(key, int):
        if not 0 <= key <= INT32_MAX:
            raise invalid_request(f"{param}: {key} is not a token id.", "logit_bias")
        return [key]
    assert isinstance(key, str)
    if not key:
        raise invalid_request(f"{param}: the text is empty.", "logit_bias")
    budget.take("logit_bias")
    tokens = await tokenize(key, False)
    if len(tokens) > MAX_BIAS_TOKENS:
        raise invalid_request(f"{param}: the text has too many tokens.", "logit_bias")
    return tokens
