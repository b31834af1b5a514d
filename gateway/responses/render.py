"""Response objects and the events of a streamed response, as the ``openai`` SDK parses them.

A stream is ``response.created`` and ``response.in_progress`` (the response with no output yet),
``response.output_item.added`` and ``response.content_part.added`` (an empty assistant message
and its empty text part), one ``response.output_text.delta`` per worker chunk with text, then
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``
and ``response.completed``: or ``response.incomplete`` when ``max_output_tokens`` cut the text
short, as OpenAI does. Each event has its ``type`` and a ``sequence_number`` counting from 0.
"""

from __future__ import annotations

import time
from typing import Any

from llamagrid.gateway.openai.rendering import reused_tokens
from llamagrid.gateway.openai.streaming import encode
from llamagrid.gateway.responses.schemas import (
    IncompleteDetails,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    ResponseCreateRequest,
    ResponseObject,
    ResponseUsage,
)
from llamagrid.v1 import inference_pb2 as pb


def started(body: ResponseCreateRequest, response_id: str) -> ResponseObject:
    """The response as it starts: in progress, no output; the request's settings echoed."""
    text: dict[str, Any] = {"format": {"type": "text"}}
    if body.text is not None and body.text.format is not None:
        text = {"format": body.text.format.model_dump(by_alias=True, exclude_none=True)}
    return ResponseObject(
        id=response_id,
        created_at=int(time.time()),
        status="in_progress",
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {},
        model=body.model,
        previous_response_id=body.previous_response_id,
        store=body.store is not False,
        temperature=body.temperature,
        top_p=body.top_p,
        text=text,
        user=body.user,
    )


def usage(proto: pb.Usage) -> ResponseUsage:
    """Token counts: the input is the whole context, the cached part what was reused."""
    return ResponseUsage(
        input_tokens=proto.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=reused_tokens(proto)),
        output_tokens=proto.completion_tokens,
        total_tokens=proto.prompt_tokens + proto.completion_tokens,
    )


def finished(
    head: ResponseObject, item_id: str, text: str, final: pb.GenerateFinal
) -> ResponseObject:
    """The response once the worker's final message has come."""
    cut = final.finish_reason == pb.FINISH_REASON_LENGTH
    message = OutputMessage(
        id=item_id, status="incomplete" if cut else "completed", content=[OutputText(text=text)]
    )
    return head.model_copy(
        update={
            "status": "incomplete" if cut else "completed",
            "completed_at": None if cut else int(time.time()),
            "incomplete_details": IncompleteDetails(reason="max_output_tokens") if cut else None,
            "output": [message],
            "usage": usage(final.usage),
        }
    )


class ResponseEvents:
    """The events of one streamed response (module docstring)."""

    def __init__(self, head: ResponseObject, item_id: str) -> None:
        self.head = head
        self.item_id = item_id
        self.sequence = 0
        self.texts: list[str] = []
        #: The finished response, once the final message has been rendered.
        self.result: ResponseObject | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return encode(event)

    def _place(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    def opening(self) -> list[bytes]:
        """The response, then its empty message and text part."""
        head = self.head.model_dump(mode="json")
        item = OutputMessage(id=self.item_id, status="in_progress", content=[])
        return [
            self._event("response.created", response=head),
            self._event("response.in_progress", response=head),
            self._event("response.output_item.added", output_index=0, item=item.model_dump()),
            self._event(
                "response.content_part.added",
                **self._place(),
                part=OutputText(text="").model_dump(),
            ),
        ]

    def delta(self, text: str) -> list[bytes]:
        """New text."""
        self.texts.append(text)
        return [self._event("response.output_text.delta", **self._place(), delta=text, logprobs=[])]

    def closing(self, final: pb.GenerateFinal) -> list[bytes]:
        """The finished text, part, message and response."""
        text = "".join(self.texts)
        result = finished(self.head, self.item_id, text, final)
        self.result = result
        message = result.output[0]
        kind = "response.completed" if result.status == "completed" else "response.incomplete"
        return [
            self._event("response.output_text.done", **self._place(), text=text, logprobs=[]),
            self._event(
                "response.content_part.done", **self._place(), part=message.content[0].model_dump()
            ),
            self._event("response.output_item.done", output_index=0, item=message.model_dump()),
            self._event(kind, response=result.model_dump(mode="json")),
        ]
