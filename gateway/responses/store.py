"""The gateway's store of finished responses, for ``GET /v1/responses/{id}``.

Only ``GET`` reads it: chaining a response (``previous_response_id``) needs nothing but the id,
which names the session holding the conversation. The store lives in this gateway's memory, so
a response is retrieved from the gateway that created it. It is bounded: at most
``max_responses`` responses and ``max_bytes`` bytes of JSON, the least recently used dropped
first. A deleted id is remembered (as many as ``max_responses``), so that this gateway refuses
to chain on it.
"""

from __future__ import annotations

from collections import OrderedDict

from starlette.requests import Request

#: Responses kept at most.
MAX_RESPONSES = 4096
#: Bytes of response JSON kept at most.
MAX_BYTES = 64 * 1024 * 1024


class ResponseStore:
    """Finished responses as JSON, least recently used first out."""

    def __init__(self, max_responses: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES) -> None:
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self.size = 0
        self._responses: OrderedDict[str, bytes] = OrderedDict()
        self._deleted: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._responses)

    def put(self, response_id: str, body: bytes) -> None:
        """Keep a response (one larger than the whole store is not kept)."""
        self._drop(response_id)
        if len(body) > self.max_bytes:
            return
        self._responses[response_id] = body
        self.size += len(body)
        while len(self._responses) > self.max_responses or self.size > self.max_bytes:
            _, oldest = self._responses.popitem(last=False)
            self.size -= len(oldest)

    def get(self, response_id: str) -> bytes | None:
        """A kept response's JSON, or None."""
        body = self._responses.get(response_id)
        if body is not None:
            self._responses.move_to_end(response_id)
        return body

    def delete(self, response_id: str) -> bool:
        """Drop a response and remember its id as deleted; False if it was not kept."""
        if not self._drop(response_id):
            return False
        self._deleted[response_id] = None
        if len(self._deleted) > self.max_responses:
            self._deleted.popitem(last=False)
        return True

    def deleted(self, response_id: str) -> bool:
        """Whether the response was deleted through this gateway (as far as it remembers)."""
        return response_id in self._deleted

    def _drop(self, response_id: str) -> bool:
        body = self._responses.pop(response_id, None)
        if body is None:
            return False
        self.size -= len(body)
        return True


def get_store(request: Request) -> ResponseStore:
    """The app's response store, made on first use."""
    store = getattr(request.app.state, "responses", None)
    if store is None:
        store = request.app.state.responses = ResponseStore()
    assert isinstance(store, ResponseStore)
    return store
