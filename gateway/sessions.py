"""Native sessions over HTTP: ``/v1/sessions``, translated to the workers' SessionService.

A session lives on one worker (its home), which keeps its transcript (worker/engine/sessions.py).
The id the gateway hands out names that worker, so any gateway in front of the same fleet routes
the session's calls home without shared state: ``lgs.<worker address, base64url>.<the worker's
own id>``. An id is only routed to a worker of the pool, never to an address it merely names,
and one naming a worker that has left the fleet is a 404 ``session_lost``.

``POST /v1/sessions/{id}/chat/completions`` takes an OpenAI chat body whose ``messages`` hold
only the new turn, so any OpenAI SDK works with ``base_url`` set to ``.../v1/sessions/{id}``.
Its images are loaded as ``/v1/chat/completions`` loads them, for the session's model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.dispatch import Dispatcher, Routed
from llamagrid.gateway.model_names import resolve_for
from llamagrid.gateway.openai import translate
from llamagrid.gateway.openai.images import image_parts, load_images
from llamagrid.gateway.openai.router import (
    ERROR_RESPONSES,
    completion_responses,
    get_dispatcher,
    run_chat,
)
from llamagrid.gateway.openai.schemas import ChatCompletion, ChatCompletionRequest
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.session_directory import (
    get_directory,
    public_id,
    request_images,
    session_stub,
)
from llamagrid.gateway.sse import EventStreamResponse
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

#: The longest public session id accepted.
MAX_ID_CHARS = 512
#: The largest TTL or turn count a request may name (the worker's fields are 32-bit).
MAX_U32 = 2**32 - 1

_TIERS: dict[int, str] = {
    pb.KV_TIER_RESIDENT: "resident",
    pb.KV_TIER_HOST: "host",
    pb.KV_TIER_TRANSCRIPT: "transcript",
}

if TYPE_CHECKING:  # the async stub type exists only in the type stubs
    Stub = pb_grpc.SessionServiceAsyncStub

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=ERROR_RESPONSES)
Dispatch = Annotated[Dispatcher, Depends(get_dispatcher)]
SessionId = Annotated[str, Path(max_length=MAX_ID_CHARS, description="The session's id.")]


class SessionCreate(BaseModel):
    """``POST /v1/sessions``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256, description="The model alias.")
    ttl_s: int | None = Field(
        default=None,
        ge=1,
        le=MAX_U32,
        description="Seconds of disuse after which the session expires (default: the worker's).",
    )


class SessionFork(BaseModel):
    """``POST /v1/sessions/{id}/fork``."""

    model_config = ConfigDict(extra="forbid")

    turns: int = Field(ge=0, le=MAX_U32, description="How many committed turns the fork keeps.")
    ttl_s: int | None = Field(default=None, ge=1, le=MAX_U32)


class SessionRollback(BaseModel):
    """``POST /v1/sessions/{id}/rollback``."""

    model_config = ConfigDict(extra="forbid")

    turns: int = Field(ge=0, le=MAX_U32, description="How many committed turns to keep.")


class Session(BaseModel):
    """A session, as the gateway describes it."""

    id: str
    object: Literal["session"] = "session"
    model: str
    #: Tokens in the transcript.
    length: int
    #: Committed turns.
    turns: int
    #: Images in the transcript.
    images: int
    #: The transcript's length at the end of each committed turn.
    turn_ends: list[int]
    #: When the session expires unless used again (Unix seconds).
    expires_at: int
    ttl_s: int
    #: Where its KV cache is: "resident", "host" or "transcript".
    kv_tier: str
    #: Whether a turn is running.
    busy: bool
    #: The worker holding it.
    worker: str


class SessionDeleted(BaseModel):
    """The answer to ``DELETE /v1/sessions/{id}``."""

    id: str
    object: Literal["session.deleted"] = "session.deleted"
    deleted: bool = True


class TurnCancelled(BaseModel):
    """The answer to ``POST /v1/sessions/{id}/cancel``."""

    id: str
    #: Whether a turn was running (and is now cancelled).
    cancelled: bool


def describe(info: pb.SessionInfo, address: str) -> Session:
    """The HTTP description of a worker's SessionInfo."""
    return Session(
        id=public_id(address, info.session_id),
        model=info.model,
        length=info.length,
        turns=len(info.turn_ends),
        images=info.images,
        turn_ends=list(info.turn_ends),
        expires_at=info.expires_unix_ms // 1000,
        ttl_s=info.ttl_s,
        kv_tier=_TIERS.get(info.kv_tier, "transcript"),
        busy=info.busy,
        worker=address,
    )


async def turn_route(
    request: Request,
    session_id: str,
    proto: pb.GenerateRequest,
    on_commit: Callable[[pb.GenerateFinal], None] | None = None,
) -> tuple[RouteRequest, Routed]:
    """Route a Generate call as the next turn of a session: to its home worker (moved first if
    the home is lost and the store holds a copy), the store's copy updated as the turn commits
    (``on_commit`` is told too). Sets ``proto.session.session_id`` to the session's id there."""
    directory = get_directory(request)
    address, worker_id = await directory.locate(session_id)
    proto.session.session_id = worker_id
    routed = Routed(resume=directory.resumer(session_id))
    model = proto.model

    async def committed(final: pb.GenerateFinal) -> None:
        images = request_images(proto)
        await directory.committed(session_id, model, routed.worker, final, images)
        if on_commit is not None:
            on_commit(final)

    routed.on_final = committed
    return RouteRequest(model=model, home=address), routed


async def _on_home(
    dispatcher: Dispatcher,
    request: Request,
    session_id: str,
    call: Any,
) -> tuple[Any, str]:
    """Run ``call(stub, worker_id, timeout)`` on the session's home worker (moving the session
    first if its home is lost and the store holds a copy)."""
    directory = get_directory(request)
    address, worker_id = await directory.locate(session_id)
    current = [worker_id]
    route = RouteRequest(model="", home=address)
    routed = Routed(
        resume=directory.resumer(session_id, lambda moved: current.__setitem__(0, moved))
    )
    request.state.routed = routed

    async def run(client: AsyncInferenceClient, timeout: float) -> tuple[Any, str]:
        return await call(session_stub(client), current[0], timeout), client.target

    return await dispatcher.unary(request, route, run, routed)


@router.post("", status_code=201)
async def open_session(
    body: SessionCreate, request: Request, response: Response, dispatcher: Dispatch
) -> Session:
    """Open a session on the worker serving the model with the fewest sessions per slot."""
    route = RouteRequest(model=body.model, new_session=True)
    routed = Routed()
    request.state.model, request.state.routed = body.model, routed

    async def run(client: AsyncInferenceClient, timeout: float) -> tuple[pb.SessionInfo, str]:
        stub = session_stub(client)
        opened = pb.OpenSessionRequest(model=body.model, ttl_s=body.ttl_s or 0)
        reply = await stub.OpenSession(opened, timeout=timeout)
        return reply.session, client.target

    info, address = await dispatcher.unary(request, route, run, routed)
    response.headers.update(routed.headers())
    home = dispatcher.pool.get(address)
    if home is not None:  # counted now: the next load report is up to an interval away
        home.sessions_opened += 1
    public = public_id(address, info.session_id)
    await get_directory(request).opened(public, body.model, address, info)
    return describe(info, address)


@router.get("/{session_id}")
async def get_session(session_id: SessionId, request: Request, dispatcher: Dispatch) -> Session:
    """Describe a session."""

    async def call(stub: Stub, worker_id: str, timeout: float) -> pb.SessionInfo:
        reply = await stub.GetSession(pb.GetSessionRequest(session_id=worker_id), timeout=timeout)
        return reply.session

    info, address = await _on_home(dispatcher, request, session_id, call)
    return describe(info, address)


@router.delete("/{session_id}")
async def delete_session(
    session_id: SessionId, request: Request, dispatcher: Dispatch
) -> SessionDeleted:
    """Delete a session; a turn running on it ends."""

    async def call(stub: Stub, worker_id: str, timeout: float) -> None:
        await stub.CloseSession(pb.CloseSessionRequest(session_id=worker_id), timeout=timeout)

    await _on_home(dispatcher, request, session_id, call)
    await get_directory(request).forget(session_id)
    return SessionDeleted(id=session_id)


@router.post("/{session_id}/fork", status_code=201)
async def fork_session(
    session_id: SessionId, body: SessionFork, request: Request, dispatcher: Dispatch
) -> Session:
    """A new session, on the same worker, holding the first ``turns`` turns of this one."""

    async def call(stub: Stub, worker_id: str, timeout: float) -> pb.SessionInfo:
        fork = pb.ForkSessionRequest(session_id=worker_id, turns=body.turns, ttl_s=body.ttl_s or 0)
        reply = await stub.ForkSession(fork, timeout=timeout)
        return reply.session

    info, address = await _on_home(dispatcher, request, session_id, call)
    fork = public_id(address, info.session_id)
    await get_directory(request).sync(fork, info.model, address, info.session_id)
    return describe(info, address)


@router.post("/{session_id}/rollback")
async def rollback_session(
    session_id: SessionId, body: SessionRollback, request: Request, dispatcher: Dispatch
) -> Session:
    """Keep only the first ``turns`` turns."""

    async def call(stub: Stub, worker_id: str, timeout: float) -> pb.SessionInfo:
        rollback = pb.RollbackSessionRequest(session_id=worker_id, turns=body.turns)
        reply = await stub.RollbackSession(rollback, timeout=timeout)
        return reply.session

    info, address = await _on_home(dispatcher, request, session_id, call)
    await get_directory(request).sync(session_id, info.model, address, info.session_id)
    return describe(info, address)


@router.post("/{session_id}/cancel")
async def cancel_turn(
    session_id: SessionId, request: Request, dispatcher: Dispatch
) -> TurnCancelled:
    """Cancel the turn running on the session, if any; the session stays as it was."""

    async def call(stub: Stub, worker_id: str, timeout: float) -> bool:
        reply = await stub.CancelTurn(pb.CancelTurnRequest(session_id=worker_id), timeout=timeout)
        return bool(reply.cancelled)

    cancelled, _ = await _on_home(dispatcher, request, session_id, call)
    return TurnCancelled(id=session_id, cancelled=cancelled)


@router.post(
    "/{session_id}/chat/completions",
    response_model=None,
    responses=completion_responses(ChatCompletion),
)
async def session_chat(
    session_id: SessionId,
    body: ChatCompletionRequest,
    request: Request,
    response: Response,
    dispatcher: Dispatch,
) -> ChatCompletion | EventStreamResponse:
    """The session's next turn: ``messages`` holds only the new messages. Usage counts the
    whole context as prompt tokens, the part reused from the session as cached tokens."""
    if image_parts(body.messages):  # checked against the session's own model
        directory = get_directory(request)
        model = await directory.model_of(session_id) or resolve_for(request, body.model)
        await load_images(request, body.messages, model)
    proto = translate.chat_request(body)
    route, routed = await turn_route(request, session_id, proto)
    return await run_chat(body, proto, route, routed, request, response, dispatcher)
