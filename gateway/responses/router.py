"""``/v1/responses``: OpenAI's Responses API, on the gateway's sessions (gateway/sessions.py).

A stored response is a turn of a session (its conversation): without ``previous_response_id``,
a new session is opened for it; with one, the turn goes to that response's session. If that
response is still the session's latest turn, the new turn is appended to the session; if later
turns were added since (or one is running), the session is forked at that response's turn and
the new turn goes to the fork, so that the later turns stay as they were. Either way only the
new input is prefilled while the session's KV cache is kept. ``store: false`` without
``previous_response_id`` is a plain Generate call that leaves nothing behind.

A session made for a response (a new one, or a fork) is closed again if its turn fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

import grpc
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from llamagrid.gateway.dispatch import Dispatcher, Routed, until_disconnected
from llamagrid.gateway.errors import OpenAIError, invalid_request, unsupported
from llamagrid.gateway.openai.rendering import Generated, missing_final
from llamagrid.gateway.openai.router import ERROR_RESPONSES, completion_responses, get_dispatcher
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.pool import WorkerPool
from llamagrid.gateway.responses import render, translate
from llamagrid.gateway.responses.schemas import (
    MAX_ID_CHARS,
    ResponseCreateRequest,
    ResponseDeleted,
    ResponseObject,
)
from llamagrid.gateway.responses.store import ResponseStore, get_store
from llamagrid.gateway.routing import prefix_key, session_key
from llamagrid.gateway.session_directory import (
    SessionDirectory,
    get_directory,
    session_stub,
)
from llamagrid.gateway.sessions import (
    SessionCreate,
    SessionFork,
    fork_session,
    get_session,
    open_session,
    turn_route,
)
from llamagrid.gateway.sse import Admitted, Events, EventStreamResponse
from llamagrid.v1 import inference_pb2 as pb

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: What a Generate stream yields: the admission, then the worker's messages.
Messages = AsyncGenerator[Admitted | pb.GenerateResponse, None]

#: The error codes of a turn refused because another turn ran on the session first.
CONFLICTS = ("session_busy", "session_length_mismatch")
#: The worker's names of request fields whose Responses names differ.
PARAMS = {
    "messages": "input",
    "prompt": "input",
    "max_tokens": "max_output_tokens",
    "json_schema": "text.format.schema",
}
#: Seconds allowed for closing a session whose turn failed.
DISCARD_TIMEOUT_S = 10.0

router = APIRouter(prefix="/v1/responses", tags=["responses"], responses=ERROR_RESPONSES)
Dispatch = Annotated[Dispatcher, Depends(get_dispatcher)]
ResponseId = Annotated[str, Path(max_length=MAX_ID_CHARS, description="The response's id.")]
#: Closing tasks of discarded sessions (kept referenced until they end).
_discarding: set[asyncio.Task[None]] = set()


@dataclass
class Target:
    """The session a turn goes to."""

    #: Its public id.
    session_id: str
    #: Its committed turns before this one (the turn runs only if it still has exactly these).
    turns: int
    #: Made for this response: closed again if the turn fails.
    created: bool


@dataclass
class Turn:
    """A Generate call, where it goes and the id of the response it makes."""

    proto: pb.GenerateRequest
    route: RouteRequest
    routed: Routed
    target: Target | None

    @property
    def response_id(self) -> str:
        return self.proto.request_id


@router.post("", response_model=None, responses=completion_responses(ResponseObject))
async def create_response(
    body: ResponseCreateRequest, request: Request, response: Response, dispatcher: Dispatch
) -> ResponseObject | EventStreamResponse:
    """A model response, streamed as Responses events when ``stream`` is true."""
    translate.check(body)
    proto = translate.generate_request(body, translate.unstored_id())
    request.state.model = body.model
    key = body.prompt_cache_key or body.user
    target = await _target(body, request, response, dispatcher)
    store = get_store(request)
    item_id = translate.message_id()
    try:
        if body.stream:
            turn, messages = await _start(request, dispatcher, proto, target, key, _admitted)
        else:
            turn, generated = await _start(request, dispatcher, proto, target, key, _generated)
    except BaseException:
        if target is not None and target.created:
            _discard(request, dispatcher.pool, target.session_id)
        raise
    head = render.started(body, turn.response_id)
    if body.stream:
        events = render.ResponseEvents(head, item_id)
        stream = _stream(messages, events, store, lambda: _discard_if(request, dispatcher, turn))
        return EventStreamResponse(stream, turn.routed.headers)
    assert generated.final is not None
    result = render.finished(head, item_id, generated.text, generated.final)
    if turn.target is not None:
        store.put(result.id, result.model_dump_json().encode())
    response.headers.update(turn.routed.headers())
    return result


@router.get("/{response_id}", responses={200: {"model": ResponseObject}})
async def retrieve_response(
    response_id: ResponseId,
    request: Request,
    stream: Annotated[bool | None, Query()] = None,
    include: Annotated[list[str] | None, Query(alias="include[]", max_length=16)] = None,
) -> Response:
    """A response stored by this gateway."""
    if stream:
        raise unsupported("stream", "A stored response cannot be streamed again.")
    if include:
        raise unsupported("include")
    body = get_store(request).get(response_id)
    if body is None:
        raise _not_stored()
    return Response(body, media_type="application/json")


@router.delete("/{response_id}")
async def delete_response(response_id: ResponseId, request: Request) -> ResponseDeleted:
    """Delete a response stored by this gateway: it can no longer be retrieved, nor chained on
    through this gateway. Its conversation's session keeps the turn until it expires or is
    deleted (later responses may build on it)."""
    if not get_store(request).delete(response_id):
        raise _not_stored()
    return ResponseDeleted(id=response_id)


def _not_stored() -> OpenAIError:
    return OpenAIError(
        404,
        "No response with this id is stored by this gateway.",
        param="response_id",
        code="response_not_found",
    )


async def _target(
    body: ResponseCreateRequest, request: Request, response: Response, dispatcher: Dispatcher
) -> Target | None:
    """The session the turn goes to; None for a response that is not stored."""
    previous = body.previous_response_id
    if previous is None:
        if body.store is False:
            return None
        create = SessionCreate(model=body.model)
        opened = await open_session(create, request, response, dispatcher)
        return Target(opened.id, 0, created=True)
    if get_store(request).deleted(previous):
        raise translate.previous_not_found()
    session_id, turn = translate.parse_previous(previous)
    try:
        session = await get_session(session_id, request, dispatcher)
    except OpenAIError as error:
        if error.status_code == 404:
            raise translate.previous_not_found() from None
        raise
    if session.model != body.model:
        raise invalid_request(
            f"The previous response was made by the model '{session.model}'; a conversation "
            "keeps its model.",
            "model",
        )
    if session.turns < turn:  # rolled back through /v1/sessions
        raise translate.previous_not_found()
    if session.turns == turn and not session.busy:
        return Target(session_id, turn, created=False)
    return await _fork(request, dispatcher, Target(session_id, turn, created=False))


async def _fork(request: Request, dispatcher: Dispatcher, target: Target) -> Target:
    """A new session holding the target's turns, for a turn that branches off."""
    try:
        fork = await fork_session(
            target.session_id, SessionFork(turns=target.turns), request, dispatcher
        )
    except OpenAIError as error:
        if error.status_code in (400, 404):  # closed or rolled back meanwhile
            raise translate.previous_not_found() from None
        raise
    return Target(fork.id, target.turns, created=True)


async def _start(
    request: Request,
    dispatcher: Dispatcher,
    proto: pb.GenerateRequest,
    target: Target | None,
    key: str | None,
    run: Callable[[Request, Dispatcher, Turn], Awaitable[T]],
) -> tuple[Turn, T]:
    """Run the turn; if another turn on the session got there first, fork and run it there.
    The worker's refusals name the fields as the Responses API does."""
    turn = await _turn(request, dispatcher, proto, target, key)
    try:
        return turn, await run(request, dispatcher, turn)
    except OpenAIError as error:
        _rename(error)
        if target is None or target.created or error.code not in CONFLICTS:
            raise
    fork = await _fork(request, dispatcher, target)
    try:
        turn = await _turn(request, dispatcher, proto, fork, key)
        return turn, await run(request, dispatcher, turn)
    except BaseException as error:
        _discard(request, dispatcher.pool, fork.session_id)
        if isinstance(error, OpenAIError):
            _rename(error)
        raise


def _rename(error: OpenAIError) -> None:
    """Name the field a worker's refusal is about as the Responses API does."""
    if error.param is not None:
        error.param = PARAMS.get(error.param, error.param)


async def _turn(
    request: Request,
    dispatcher: Dispatcher,
    proto: pb.GenerateRequest,
    target: Target | None,
    key: str | None,
) -> Turn:
    """Where the Generate call goes: the session's home worker (as gateway/sessions.py routes a
    session's chat turn), else where the model's policy says, with the X-Session-ID header or
    ``key`` (``prompt_cache_key``, else ``user``) as the client's session."""
    if target is None:
        prefix = prefix_key(proto, dispatcher.prefix_chars)
        route = RouteRequest(proto.model, prefix, session_key(request, key))
        routed = Routed()
        request.state.routed = routed
        return Turn(proto, route, routed, None)
    proto = _copy(proto)
    proto.request_id = translate.stored_id(target.turns + 1, target.session_id)
    proto.session.expected_turns = target.turns
    route, routed = await turn_route(request, target.session_id, proto)
    request.state.routed = routed
    return Turn(proto, route, routed, target)


def _copy(proto: pb.GenerateRequest) -> pb.GenerateRequest:
    copy = pb.GenerateRequest()
    copy.CopyFrom(proto)
    return copy


async def _generated(request: Request, dispatcher: Dispatcher, turn: Turn) -> Generated:
    """The whole answer of the Generate call."""
    return Generated.gather(await dispatcher.generate(request, turn.proto, turn.route, turn.routed))


async def _admitted(request: Request, dispatcher: Dispatcher, turn: Turn) -> Messages:
    """The Generate stream, once the worker has accepted the call (a refusal is raised here,
    before any event, and is answered as a plain HTTP error)."""
    messages = dispatcher.stream(turn.proto, turn.route, turn.routed)
    try:
        await until_disconnected(request, anext(messages))
    except BaseException:
        await messages.aclose()
        raise
    return messages


async def _stream(
    messages: Messages,
    events: render.ResponseEvents,
    store: ResponseStore,
    on_failure: Callable[[], None],
) -> Events:
    """The events of an admitted Generate stream; a stored response is kept once finished."""
    try:
        async with contextlib.aclosing(messages):
            yield events.opening()
            async for message in messages:
                if isinstance(message, Admitted):
                    continue
                if message.HasField("chunk"):
                    if message.chunk.text:
                        yield events.delta(message.chunk.text)
                    continue
                closing = events.closing(message.final)
                assert events.result is not None
                if message.final.HasField("session"):
                    store.put(events.result.id, events.result.model_dump_json().encode())
                yield closing
        if events.result is None:
            raise missing_final()
    finally:
        if events.result is None:
            on_failure()


def _discard_if(request: Request, dispatcher: Dispatcher, turn: Turn) -> None:
    if turn.target is not None and turn.target.created:
        _discard(request, dispatcher.pool, turn.target.session_id)


def _discard(request: Request, pool: WorkerPool, session_id: str) -> None:
    """Close, in the background, a session made for a response whose turn failed."""
    task = asyncio.create_task(_close(get_directory(request), pool, session_id))
    _discarding.add(task)
    task.add_done_callback(_discarding.discard)


async def _close(directory: SessionDirectory, pool: WorkerPool, session_id: str) -> None:
    try:
        address, worker_id = await directory.locate(session_id)
        worker = next((w for w in pool.workers if w.address == address), None)
        if worker is not None:
            async with pool.lease(worker):
                close = pb.CloseSessionRequest(session_id=worker_id)
                await session_stub(worker.client).CloseSession(close, timeout=DISCARD_TIMEOUT_S)
        await directory.forget(session_id)
    except (OpenAIError, grpc.aio.AioRpcError) as error:
        logger.info("could not close session %s: %r", session_id, error)
