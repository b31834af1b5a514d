"""LMDeploy's ``POST /v1/chat/interactive``, on top of the native sessions (gateway/sessions.py).

LMDeploy (up to v0.9; v0.10 removed the route) keeps a conversation on the server under an
integer ``session_id``: with ``interactive_mode: true`` each request's ``prompt`` is the next
turn, and the answer is one JSON object, or one JSON object per line when ``stream`` is true,
holding ``text``, ``tokens`` (generated so far), ``input_tokens`` (the turn's new prompt
tokens), ``history_tokens`` (the session's length before the turn) and ``finish_reason``.

Here each integer id names a native session, which the gateway opens on first use:

- **Ids are scoped per API key**: the same integer sent with two keys names two sessions. With
  no key configured, every caller shares one scope. The map from (key, integer) to the public
  session id lives in this gateway's memory, bounded (MAX_INTERACTIVE_SESSIONS, least recently
  used first out). An entry is dropped when its session turns out to be gone (404), so the next
  request with that integer starts a new conversation. The session a reply used is named in
  the ``X-Llamagrid-Session-ID`` header, so the native routes can reach it too.
- ``session_id: -1`` means no session: the request is stateless whatever ``interactive_mode``
  says (LMDeploy would keep a session nobody can name again).
- ``interactive_mode: false`` on a known session makes the request its last: the prompt is a
  turn on top of the history, and the session is ended afterwards whatever the outcome. An
  empty string prompt with ``interactive_mode: false`` only ends the session (LMDeploy's
  ``end_session``) and generates nothing. On an unknown id the request is stateless.
- ``cancel: true`` cancels the turn running on the session; the session stays as it was.

Every field LMDeploy's request takes is honoured or refused with 400 ``unsupported_parameter``;
a missing sampling field takes LMDeploy's default, not the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import anyio
import grpc
from fastapi import APIRouter, Depends, Request, Response
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic_core import to_json
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from llamagrid.gateway.connections import DIRECT_BODY, DirectBody
from llamagrid.gateway.dispatch import Dispatcher, Routed
from llamagrid.gateway.errors import OpenAIError, invalid_request, unsupported
from llamagrid.gateway.fields import UNSET_SCHEMA, refuse_undeclared
from llamagrid.gateway.openai import rendering, translate
from llamagrid.gateway.openai.images import image_parts, load_images
from llamagrid.gateway.openai.router import ERROR_RESPONSES, get_dispatcher
from llamagrid.gateway.openai.schemas import (
    INT32_MAX,
    INT32_MIN,
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
)
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.routing import generate_route
from llamagrid.gateway.session_directory import (
    get_directory,
    session_stub,
)
from llamagrid.gateway.sessions import (
    SessionCreate,
    cancel_turn,
    delete_session,
    open_session,
    turn_route,
)
from llamagrid.gateway.sse import (
    ADMITTED,
    Admitted,
    AdmittedStream,
    send_body,
)
from llamagrid.v1 import inference_pb2 as pb

logger = logging.getLogger(__name__)

#: The response header naming the session a reply used (its public id).
SESSION_HEADER = "X-Llamagrid-Session-ID"
#: The ``session_id`` that means "no session".
NO_SESSION = -1
#: The largest integer id (LMDeploy's engines hold ids as 64-bit integers).
MAX_SESSION_ID = 2**63 - 1
#: Integer ids one gateway remembers. An entry costs a few hundred bytes; the least recently
#: used entry goes first, and its session then expires on its worker after its TTL. A constant
#: rather than a setting: raise it here if one gateway must track more conversations.
MAX_INTERACTIVE_SESSIONS = 65_536
#: Seconds the closing of an ended session may take on its worker.
CLOSE_TIMEOUT_S = 30.0
#: The codes of a 404 that means the session is gone for good.
GONE_CODES = frozenset({"session_not_found", "session_expired", "session_lost"})
#: Worker parameter names as this route calls them (errors name the field the client sent).
_PARAMS = {
    "max_tokens": "request_output_len",
    "repeat_penalty": "repetition_penalty",
    "messages": "prompt",
}
#: The media type of a streamed answer: one JSON object per line (not server-sent events).
JSON_LINES = "application/x-ndjson"
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

ScopeKey = tuple[bytes, int]
Dispatch = Annotated[Dispatcher, Depends(get_dispatcher)]


class InteractiveRequest(BaseModel):
    """``POST /v1/chat/interactive``: LMDeploy's GenerateRequest (v0.9), plus ``model``."""

    # Fields it does not declare are refused by name (LMDeploy ignores them).
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"additionalProperties": UNSET_SCHEMA}
    )

    prompt: StrictStr | list[ChatMessage] = Field(
        description="The turn: a user message as a string, or OpenAI chat messages."
    )
    session_id: StrictInt = Field(
        default=NO_SESSION,
        ge=NO_SESSION,
        le=MAX_SESSION_ID,
        description="The conversation, scoped to the caller's API key; -1: none (stateless).",
    )
    interactive_mode: StrictBool = Field(
        default=False,
        description="true: the prompt is the session's next turn (the session opens on first "
        "use). false: the request is the session's last, and an empty prompt only ends it.",
    )
    stream: StrictBool = Field(default=False, description="Answer one JSON object per line.")
    cancel: StrictBool | None = Field(
        default=False, description="Cancel the turn running on the session, and nothing else."
    )
    stop: StrictStr | list[StrictStr] | StrictBool | None = Field(
        default=None,
        description="Stop strings (the worker bounds their number and size). false: none "
        "(LMDeploy 0.1 sent a boolean here).",
    )
    request_output_len: StrictInt | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="The most tokens to generate (unset: until the end or a full context); "
        "0 only with an empty prompt that ends a session.",
    )
    top_p: float = 0.8
    top_k: StrictInt = Field(default=40, ge=INT32_MIN, le=INT32_MAX)
    temperature: float = 0.8
    repetition_penalty: float = Field(
        default=1.0, description="Penalty on tokens already in the context; 1: none."
    )
    min_p: float = 0.0
    ignore_eos: StrictBool = False
    seed: StrictInt | None = Field(
        default=None, ge=0, le=2**64 - 1, description="Sampling seed; 0 or unset: random."
    )
    skip_special_tokens: StrictBool | None = Field(
        default=True,
        description="Only true (or null) is supported: special tokens never appear in the text.",
    )
    spaces_between_special_tokens: StrictBool | None = Field(
        default=True, description="No effect: special tokens never appear in the text."
    )
    min_new_tokens: StrictInt | None = Field(
        default=None, ge=0, le=2**32 - 1, description="Only 0 (or unset) is supported."
    )
    image_url: StrictStr | list[StrictStr] | None = Field(
        default=None,
        description="Images for a vision model, before the text of a string prompt (as LMDeploy "
        "puts them): data: URLs, or http(s):// and file:// URLs where the operator allows them "
        "(README, Images). With chat messages, images go in their content parts instead.",
    )
    adapter_name: StrictStr | None = Field(
        default=None, description="Not supported (no LoRA adapters): only null or empty."
    )
    kwargs: dict[str, Any] | None = Field(
        default=None,
        description="What LMDeploy's APIClient sends for its **kwargs: only an empty object "
        "(or null) is accepted.",
    )
    model: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The model alias (llamagrid's addition): needed only when the gateway "
        "serves several models; a session keeps the model it was opened with.",
    )


FinishReason = Literal["stop", "length", "error"]


class InteractiveReply(BaseModel):
    """The answer, or one line of a streamed answer."""

    #: The whole text, or in a stream the text since the previous line.
    text: str
    #: Tokens generated so far.
    tokens: int
    #: The turn's new prompt tokens (the chat template's glue included). In a stream, exact on
    #: the last line; 0 before it.
    input_tokens: int
    #: Tokens in the session before the turn; 0 without a session.
    history_tokens: int
    #: "stop" or "length" on the last line, "error" on a line that ends a failed stream
    #: (which also holds ``error``), null before.
    finish_reason: FinishReason | None


def reply_fields(
    text: str,
    tokens: int,
    input_tokens: int,
    history_tokens: int,
    finish_reason: FinishReason | None,
) -> dict[str, Any]:
    """An InteractiveReply as plain data, in LMDeploy's key order."""
    return {
        "text": text,
        "tokens": tokens,
        "input_tokens": input_tokens,
        "history_tokens": history_tokens,
        "finish_reason": finish_reason,
    }


#: The answer to a request that cancels a turn or ends a session (LMDeploy's, field for field).
NOTHING: Final = reply_fields("", 0, 0, 0, "stop")


# ---------------------------------------------------------------------------------------------
# The map from (API key, integer id) to a session


@dataclass
class Entry:
    """The native session an integer id names."""

    session_id: str
    model: str
    #: The session's length after the last turn this route saw.
    length: int = 0


class InteractiveSessions:
    """The bounded map from (caller's key, integer id) to native sessions, least recently used
    first out. Used from the event loop only."""

    def __init__(self, keyed: bool, max_entries: int = MAX_INTERACTIVE_SESSIONS) -> None:
        #: Whether the gateway has API keys (else every caller shares one scope).
        self.keyed = keyed
        self.max_entries = max_entries
        self._entries: OrderedDict[ScopeKey, Entry] = OrderedDict()
        self._opening: dict[ScopeKey, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, request: Request, session_id: int) -> ScopeKey:
        """The map key of an integer id sent with this request's API key. The key (already
        checked by the gateway) is kept only as its SHA-256 digest."""
        if not self.keyed:
            return b"", session_id
        scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
        credential = token if scheme.lower() == "bearer" else ""
        return hashlib.sha256(credential.encode()).digest(), session_id

    def get(self, key: ScopeKey) -> Entry | None:
        """The entry, now the most recently used."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: ScopeKey, entry: Entry) -> None:
        """Add or replace an entry, dropping the least recently used beyond the bound."""
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: ScopeKey) -> Entry | None:
        """Remove and return the entry."""
        return self._entries.pop(key, None)

    def discard(self, key: ScopeKey, session_id: str) -> None:
        """Forget the entry if it still names ``session_id`` (not a newer session)."""
        entry = self._entries.get(key)
        if entry is not None and entry.session_id == session_id:
            del self._entries[key]

    async def get_or_open(self, key: ScopeKey, opener: Callable[[], Awaitable[Entry]]) -> Entry:
        """The entry, opening its session first if there is none. Concurrent first requests
        for one id wait for one opener; if it fails, each tries in turn."""
        while True:
            entry = self.get(key)
            if entry is not None:
                return entry
            pending = self._opening.get(key)
            if pending is None:
                break
            await asyncio.wait({pending})
        signal: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening[key] = signal
        try:
            entry = await opener()
            self.put(key, entry)
            return entry
        finally:
            del self._opening[key]
            signal.set_result(None)


def get_sessions(request: Request) -> InteractiveSessions:
    """The app's map (set by create_app)."""
    sessions = request.app.state.interactive
    assert isinstance(sessions, InteractiveSessions)
    return sessions


async def end_quietly(dispatcher: Dispatcher, request: Request, session_id: str) -> None:
    """Close a session on its home worker, whatever becomes of the request: shielded from its
    cancellation, and not through the request (its client may be gone). Errors are logged."""
    with anyio.CancelScope(shield=True):
        try:
            directory = get_directory(request)
            address, worker_id = await directory.locate(session_id)
            worker = next((w for w in dispatcher.pool.workers if w.address == address), None)
            if worker is not None:
                closing = pb.CloseSessionRequest(session_id=worker_id)
                await session_stub(worker.client).CloseSession(closing, timeout=CLOSE_TIMEOUT_S)
            await directory.forget(session_id)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                logger.info("closing session %s failed: %s", session_id, error.code().name)
        except Exception:
            logger.exception("closing session %s failed", session_id)


# ---------------------------------------------------------------------------------------------
# The request


def _refuse_unsupported(body: InteractiveRequest) -> None:
    """Refuse, by name, every field set to something llamagrid cannot honour."""
    if body.adapter_name:
        raise unsupported("adapter_name", "adapter_name is not supported (no LoRA adapters).")
    if body.skip_special_tokens is False:
        raise unsupported(
            "skip_special_tokens",
            "Only skip_special_tokens=true is supported: special tokens "
            "never appear in the generated text.",
        )
    if body.min_new_tokens:
        raise unsupported("min_new_tokens")
    if body.kwargs:
        raise unsupported("kwargs", "kwargs must be empty.")
    if body.stop is True:
        raise unsupported(
            "stop",
            "stop=true (LMDeploy 0.1's way to stop a session) is not supported: send cancel=true.",
        )


def _text_turn(prompt: str | list[ChatMessage]) -> list[ChatMessage]:
    """A string prompt is one user message."""
    if isinstance(prompt, str):
        return [ChatMessage(role="user", content=prompt)]
    return prompt


async def turn_messages(
    body: InteractiveRequest, request: Request, dispatcher: Dispatcher
) -> list[ChatMessage]:
    """The turn's messages, their images loaded: a string prompt is one user message, after the
    images of ``image_url``; chat messages carry theirs in their content parts."""
    given = body.image_url
    urls = [given] if isinstance(given, str) else list(given or [])
    if urls and not isinstance(body.prompt, str):
        raise invalid_request(
            "image_url goes with a string prompt: with chat messages, put the images in their "
            "content as image_url parts.",
            "image_url",
        )
    if not urls:
        messages = _text_turn(body.prompt)
    else:
        parts = [ContentPart(type="image_url", image_url=url) for url in urls]
        text = ContentPart(type="text", text=str(body.prompt))
        messages = [ChatMessage(role="user", content=[*parts, text])]
    if not image_parts(messages):
        return messages
    try:
        await load_images(request, messages, _model(body, dispatcher))
    except OpenAIError as error:
        if urls:  # the images of image_url, named as the client sent them
            number = (error.param or "").partition("].content[")[2].partition("]")[0]
            error.param = "image_url" if isinstance(given, str) else f"image_url[{number}]"
        raise rename(error) from None
    return messages


def generate_request(
    body: InteractiveRequest, model: str, messages: list[ChatMessage] | None = None
) -> pb.GenerateRequest:
    """The Generate call for the request (errors name LMDeploy's fields); ``messages`` are its
    turn with images loaded (turn_messages), by default the prompt's text alone."""
    if body.request_output_len == 0:
        raise invalid_request(
            "request_output_len must be at least 1 (0 only ends a session: with an empty "
            "prompt and interactive_mode false).",
            "request_output_len",
        )
    stop = None if isinstance(body.stop, bool) else body.stop
    chat = ChatCompletionRequest(
        model=model,
        messages=messages if messages is not None else _text_turn(body.prompt),
        stop=stop,
        max_tokens=body.request_output_len,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        # LMDeploy's penalty is Hugging Face's, over the whole sequence.
        repeat_penalty=body.repetition_penalty,
        repeat_last_n=-1 if body.repetition_penalty != 1.0 else None,
        ignore_eos=body.ignore_eos,
        seed=body.seed or None,  # LMDeploy: a seed of 0 means none
    )
    with _renamed():
        return translate.chat_request(chat)


@contextlib.contextmanager
def _renamed() -> Iterator[None]:
    """Errors raised inside name the request's own fields."""
    try:
        yield
    except OpenAIError as error:
        raise rename(error) from None


def rename(error: OpenAIError) -> OpenAIError:
    """The error with its ``param`` (and the message's leading word) in this route's terms."""
    param = error.param or ""
    for ours, theirs in _PARAMS.items():
        if param == ours or param.startswith((ours + "[", ours + ".")):
            error.param = theirs + param[len(ours) :]
            if error.message.startswith(ours):
                error.message = theirs + error.message[len(ours) :]
            break
    return error


def _model(body: InteractiveRequest, dispatcher: Dispatcher) -> str:
    """The model: the request's, else the only one served."""
    if body.model:
        return body.model
    served = dispatcher.pool.models()
    if len(served) == 1:
        return next(iter(served))
    if not served:
        raise OpenAIError(503, "No worker is available.", "service_unavailable_error")
    raise invalid_request(
        f"This gateway serves {len(served)} models: name one in 'model'.", "model"
    )


def _gone(error: OpenAIError) -> bool:
    return error.status_code == 404 and error.code in GONE_CODES


router = APIRouter(prefix="/v1", tags=["interactive"], responses=ERROR_RESPONSES)

#: The documented 200: one object, or one object per line when stream is true.
_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InteractiveReply,
        "description": "An InteractiveReply, or one per line (application/x-ndjson) when "
        "stream is true; a failed stream ends with a line whose finish_reason is 'error' and "
        "which also holds OpenAI's error object.",
        "content": {JSON_LINES: {"itemSchema": {"$ref": "#/components/schemas/InteractiveReply"}}},
    }
}


@router.post("/chat/interactive", response_model=None, responses=_OK)
async def chat_interactive(
    body: InteractiveRequest, request: Request, dispatcher: Dispatch
) -> Response:
    """LMDeploy's interactive chat: the conversation is kept on the server by ``session_id``;
    the ``X-Llamagrid-Session-ID`` header names the session used."""
    refuse_undeclared(body)
    sessions = get_sessions(request)
    key = sessions.key(request, body.session_id)
    if body.cancel:
        return await _cancel(body, key, sessions, request, dispatcher)
    _refuse_unsupported(body)
    if not body.interactive_mode and body.prompt == "":
        return await _end(body, key, sessions, request, dispatcher)
    turn = _Turn(body, await turn_messages(body, request, dispatcher), request, dispatcher)
    if body.session_id == NO_SESSION:
        return await turn.stateless()
    if body.interactive_mode:

        async def opener() -> Entry:
            session = await open_session(
                SessionCreate(model=_model(body, dispatcher)), request, Response(), dispatcher
            )
            return Entry(session.id, session.model)

        current = await sessions.get_or_open(key, opener)
        _check_model(body, current)
        return await turn.on_session(key, current, sessions, last=False)
    ending = sessions.get(key)
    if ending is None:
        return await turn.stateless()
    _check_model(body, ending)
    sessions.pop(key)
    return await turn.on_session(key, ending, sessions, last=True)


def _check_model(body: InteractiveRequest, entry: Entry) -> None:
    """A session keeps the model it was opened with."""
    if body.model and body.model != entry.model:
        error = invalid_request(
            f"Session {body.session_id} serves the model '{entry.model}'.", "model"
        )
        error.headers[SESSION_HEADER] = entry.session_id
        raise error


async def _cancel(
    body: InteractiveRequest,
    key: ScopeKey,
    sessions: InteractiveSessions,
    request: Request,
    dispatcher: Dispatcher,
) -> Response:
    """Cancel the running turn of the session, if any (LMDeploy answers the same either way)."""
    if body.session_id == NO_SESSION:
        raise invalid_request("Set a session_id to cancel its turn.", "session_id")
    entry = sessions.get(key)
    if entry is None:
        return JSONResponse(NOTHING)
    try:
        await cancel_turn(entry.session_id, request, dispatcher)
    except OpenAIError as error:
        if not _gone(error):
            error.headers[SESSION_HEADER] = entry.session_id
            raise
        sessions.discard(key, entry.session_id)
    return JSONResponse(NOTHING, headers={SESSION_HEADER: entry.session_id})


async def _end(
    body: InteractiveRequest,
    key: ScopeKey,
    sessions: InteractiveSessions,
    request: Request,
    dispatcher: Dispatcher,
) -> Response:
    """End the session (an empty prompt with interactive_mode false): nothing is generated."""
    entry = sessions.pop(key) if body.session_id != NO_SESSION else None
    if entry is None:
        return JSONResponse(NOTHING)
    try:
        await delete_session(entry.session_id, request, dispatcher)
    except OpenAIError as error:
        if not _gone(error):
            error.headers[SESSION_HEADER] = entry.session_id
            raise
    return JSONResponse(NOTHING, headers={SESSION_HEADER: entry.session_id})


class _Turn:
    """One generation: stateless, or a turn of a session."""

    def __init__(
        self,
        body: InteractiveRequest,
        messages: list[ChatMessage],
        request: Request,
        dispatcher: Dispatcher,
    ) -> None:
        """Translate (and so check) the request before any session is opened or ended."""
        self.body = body
        self.request = request
        self.dispatcher = dispatcher
        self.proto = generate_request(body, "", messages)

    async def stateless(self) -> Response:
        proto = self.proto
        proto.model = _model(self.body, self.dispatcher)
        route = generate_route(proto, self.request, None, self.dispatcher.prefix_chars)
        return await self._run(proto, route, Routed(), history=0)

    async def on_session(
        self, key: ScopeKey, entry: Entry, sessions: InteractiveSessions, last: bool
    ) -> Response:
        """A turn of ``entry``'s session; ``last``: the session ends after it."""
        header = {SESSION_HEADER: entry.session_id}
        public = entry.session_id
        proto = self.proto
        proto.model = entry.model

        def committed(final: pb.GenerateFinal) -> None:
            entry.length = final.session.length

        try:
            route, routed = await turn_route(self.request, public, proto, committed)
        except OpenAIError as error:
            error.headers.update(header)
            if last:
                await end_quietly(self.dispatcher, self.request, public)
            raise

        def gone() -> None:
            sessions.discard(key, public)

        async def done() -> None:
            if last:
                await end_quietly(self.dispatcher, self.request, public)

        return await self._run(proto, route, routed, entry.length, header, gone, done)

    async def _run(
        self,
        proto: pb.GenerateRequest,
        route: RouteRequest,
        routed: Routed,
        history: int,
        headers: dict[str, str] | None = None,
        gone: Callable[[], None] | None = None,
        done: Callable[[], Awaitable[None]] | None = None,
    ) -> Response:
        """Run the call: a JSON answer, or a stream of lines. ``gone`` is called when the
        session turns out to be lost, ``done`` when the call is over, whatever its outcome."""
        headers = headers or {}
        self.request.state.model, self.request.state.routed = proto.model, routed
        if self.body.stream:

            def late_headers() -> dict[str, str]:
                return {**routed.headers(), **headers}

            lines = _lines(self.dispatcher.stream(proto, route, routed), history, gone, done)
            return JsonLinesResponse(lines, late_headers)
        try:
            responses = await self.dispatcher.generate(self.request, proto, route, routed)
            generated = rendering.Generated.gather(responses)
        except OpenAIError as error:
            if gone is not None and _gone(error):
                gone()
            error.headers.update(headers)
            raise rename(error) from None
        finally:
            if done is not None:
                await done()
        assert generated.final is not None  # gather raises without it
        final = generated.final
        fields = reply_fields(
            generated.text,
            final.usage.completion_tokens,
            *_counts(final, history),
            rendering.finish_reason(final),
        )
        return JSONResponse(fields, headers={**routed.headers(), **headers})


def _counts(final: pb.GenerateFinal, history: int) -> tuple[int, int]:
    """The turn's input tokens and the session's length before it, from the final message."""
    if final.HasField("session"):
        history = final.session.length - len(final.session.appended_token_ids)
    history = max(0, history)
    return max(0, final.usage.prompt_tokens - history), history


def _line(fields: dict[str, Any]) -> bytes:
    """One line of a stream, as LMDeploy writes it (compact JSON, then a newline)."""
    return to_json(fields, inf_nan_mode="null") + b"\n"


def error_line(error: OpenAIError, tokens: int, history: int) -> bytes:
    """The line that ends a failed stream: LMDeploy's fields with finish_reason 'error', and
    OpenAI's error object."""
    return _line({**reply_fields("", tokens, 0, history, "error"), **error.body()})


async def _lines(
    messages: AsyncGenerator[Admitted | pb.GenerateResponse, None],
    history: int,
    gone: Callable[[], None] | None,
    done: Callable[[], Awaitable[None]] | None,
) -> AsyncGenerator[Admitted | bytes, None]:
    """The stream's lines: ADMITTED first, then a line per chunk with text, then the last line
    with the exact counts. An error before admission is raised (a plain HTTP error); a later
    one ends the stream with an error line."""
    admitted, finished, tokens = False, False, 0
    try:
        async with contextlib.aclosing(messages):
            async for message in messages:
                if isinstance(message, Admitted):
                    admitted = True
                    yield ADMITTED
                elif message.HasField("chunk"):
                    tokens += len(message.chunk.token_ids)
                    if message.chunk.text:
                        yield _line(reply_fields(message.chunk.text, tokens, 0, history, None))
                else:
                    final = message.final
                    counts = _counts(final, history)
                    reason = rendering.finish_reason(final)
                    finished = True
                    yield _line(reply_fields("", final.usage.completion_tokens, *counts, reason))
    except OpenAIError as error:
        if not admitted:
            if gone is not None and _gone(error):
                gone()
            raise rename(error) from None
        yield error_line(rename(error), tokens, history)
        return
    finally:
        if done is not None:
            await done()
    if not finished:
        yield error_line(rendering.missing_final(), tokens, history)


# ---------------------------------------------------------------------------------------------
# The streamed response


class JsonLinesResponse(AdmittedStream):
    """A stream of JSON lines that starts once the worker admits the call (its headers go out
    then) and stops when the client leaves. An error before admission is a plain HTTP error."""

    media_type = JSON_LINES

    def __init__(
        self,
        lines: AsyncGenerator[Admitted | bytes, None],
        late_headers: Callable[[], Mapping[str, str]],
    ) -> None:
        super().__init__(lines, _STREAM_HEADERS, late_headers)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        started, first = await self._first(scope, receive, send)
        if not started:
            return
        if isinstance(first, bytes):
            await send_body(send, first)
        direct: DirectBody | None = scope.get("extensions", {}).get(DIRECT_BODY)
        try:
            async for line in self._source:
                if isinstance(line, bytes) and (direct is None or not direct.write(line)):
                    await send_body(send, line)
        except Exception:
            logger.exception("interactive stream failed")
            failure = OpenAIError(500, "The stream failed.", "server_error")
            await send_body(send, error_line(failure, 0, 0), more_body=False)
            return
        await send_body(send, b"", more_body=False)
