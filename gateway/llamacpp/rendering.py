"""Rendering of Generate results as llama-server's /completion answers and stream events.

The answer carries llama-server's fields: ``content``, ``tokens``, ``stop``, ``stop_type``
(``eos``, ``word`` or ``limit``), the README's
``stopped_eos``/``stopped_word``/``stopped_limit`` and ``stopping_word``,
``tokens_predicted``, ``tokens_evaluated``, ``tokens_cached``, ``truncated`` (always false:
llamagrid never shifts context), ``generation_settings``, ``timings`` and, with ``n_probs``,
``completion_probabilities`` (``{"content", "probs": [{"tok_str", "prob"}]}`` per token).
A stream sends ``content`` and ``stop: false`` (with ``tokens``, and the probabilities when
asked for) per worker message, then one event with every field and ``stop: true``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llamagrid.gateway.openai.rendering import Generated
from llamagrid.gateway.openai.streaming import Message
from llamagrid.gateway.sse import ADMITTED, Admitted, Event
from llamagrid.v1 import inference_pb2 as pb

#: llama-server's stop_type for each finish reason.
STOP_TYPES = {
    pb.FINISH_REASON_EOS: "eos",
    pb.FINISH_REASON_STOP_STRING: "word",
    pb.FINISH_REASON_LENGTH: "limit",
    pb.FINISH_REASON_TOOL_CALLS: "eos",
}


def probabilities(entries: Sequence[pb.TokenLogprob]) -> list[dict[str, Any]]:
    """``completion_probabilities``: each generated token, with its alternatives' probabilities."""
    return [
        {
            "content": entry.chosen.token,
            "id": entry.chosen.token_id,
            "probs": [{"tok_str": top.token, "prob": math.exp(top.logprob)} for top in entry.top],
        }
        for entry in entries
    ]


def timings(usage: pb.Usage) -> dict[str, float]:
    """llama-server's ``timings``: the prompt tokens computed (not reused from cache) and the
    time they took; the tokens generated and the time they took."""
    return {
        "prompt_n": usage.prefilled_tokens,
        "prompt_ms": usage.prefill_ms,
        **_rates("prompt", usage.prefilled_tokens, usage.prefill_ms),
        "predicted_n": usage.completion_tokens,
        "predicted_ms": usage.decode_ms,
        **_rates("predicted", usage.completion_tokens, usage.decode_ms),
    }


def _rates(kind: str, tokens: int, ms: float) -> dict[str, float]:
    return {
        f"{kind}_per_token_ms": ms / tokens if tokens else 0.0,
        f"{kind}_per_second": 1000.0 * tokens / ms if ms > 0 else 0.0,
    }


def final_fields(
    final: pb.GenerateFinal, model: str, settings: dict[str, Any], prompt: str | list[Any]
) -> dict[str, Any]:
    """The fields of the last answer that describe how generation ended and what it cost."""
    usage = final.usage
    stop_type = STOP_TYPES.get(final.finish_reason, "eos")
    return {
        "model": model,
        "tokens_predicted": usage.completion_tokens,
        "tokens_evaluated": usage.prompt_tokens,
        "tokens_cached": usage.cached_tokens + usage.restored_tokens,
        "generation_settings": settings,
        "prompt": prompt,
        "truncated": False,
        "stop_type": stop_type,
        "stopped_eos": stop_type == "eos",
        "stopped_word": stop_type == "word",
        "stopped_limit": stop_type == "limit",
        "stopping_word": final.matched_stop,
        "timings": timings(usage),
    }


def completion(
    generated: Generated,
    model: str,
    settings: dict[str, Any],
    prompt: str | list[Any],
    n_probs: int,
) -> dict[str, Any]:
    """The answer of a non-streamed /completion."""
    assert generated.final is not None
    body: dict[str, Any] = {
        "index": 0,
        "id_slot": -1,
        "content": generated.text,
        "tokens": generated.token_ids,
        "stop": True,
        **final_fields(generated.final, model, settings, prompt),
    }
    if n_probs:
        body["completion_probabilities"] = probabilities(generated.logprobs)
    return body


class CompletionEvents:
    """The events of a streamed /completion (streaming.Renderer)."""

    def __init__(
        self, model: str, settings: dict[str, Any], prompt: str | list[Any], n_probs: int
    ) -> None:
        self.model, self.settings, self.prompt, self.n_probs = model, settings, prompt, n_probs
        self.finished = False

    def render(self, message: Message) -> list[Event]:
        """A comment on admission, an event per chunk with output, the closing event."""
        if isinstance(message, Admitted):
            return [ADMITTED]
        if message.HasField("chunk"):
            chunk = message.chunk
            if not (chunk.text or chunk.token_ids):
                return []
            event: dict[str, Any] = {
                "index": 0,
                "content": chunk.text,
                "tokens": list(chunk.token_ids),
                "stop": False,
                "id_slot": -1,
            }
            if self.n_probs:
                event["completion_probabilities"] = probabilities(chunk.logprobs)
            return [event]
        self.finished = True
        closing = {
            "index": 0,
            "content": "",
            "tokens": [],
            "stop": True,
            "id_slot": -1,
            **final_fields(message.final, self.model, self.settings, self.prompt),
        }
        return [closing]
