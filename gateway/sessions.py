"""Native sessions over HTTP: ``/v1/sessions``, translated to the workers' SessionService.

A session lives on one worker (its home), which keeps its transcript (worker/engine/sessions.py).
The id the gateway hands out names that worker, so any gateway in front of the same fleet routes
the session's calls home without shared state: ``lgs.<worker address, base64url>.<the worker's
own id>``. An id is only routed to a worker of the pool, never to an address it merely names,
and one naming a worker that has left the fleet is a 404 ``session_lost``.

``POST /v1/sessions/{id}/chat/completions`` takes an OpenAI chat body whose ``messages`` hold
only the new turn, so any OpenAI SDK works with ``base_url`` set to ``.../v1/sessions/{id}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.dispatch import Dispatcher, Routed
from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.openai import translate
from llamagrid.gateway.openai.router import (
    ERROR_RESPONSES,
    completion_responses,
    get_dispatcher,
    log_unknown_fields,
    run_chat,
)
from llamagrid.gateway.openai.schemas import ChatCompletion, ChatCompletionRequest
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.sse import EventStreamResponse
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

#: What a public session id starts with.
ID_PREFIX = "lgs"
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


def session_stub(client: AsyncInferenceClient) -> Stub:
    """A SessionService stub on a worker client's channel (its TLS and token included)."""
    return pb_grpc.SessionServiceStub(client.channel)


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


def public_id(address: str, worker_id: str) -> str:
    """The id clients see: the home worker's address and the worker's own id."""
    encoded = base64.urlsafe_b64encode(address.encode()).decode().rstrip("=")
    return f"{ID_PREFIX}.{encoded}.{worker_id}"


def parse_id(session_id: str) -> tuple[str, str]:
    """The home worker's address and the worker's own id; 404 for an id we never made."""
    prefix, _, rest = session_id.partition(".")
    encoded, _, worker_id = rest.partition(".")
    try:
        if prefix != ID_PREFIX or not encoded or not worker_id:
            raise ValueError(session_id)
        padded = encoded + "=" * (-len(encoded) % 4)
        address = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        if not address:
            raise ValueError(session_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise OpenAIError(
            404,
            "No session has this id.",
            param="session_id",
            code="session_not_found",
        ) from None
    return address, worker_id


def describe(info: pb.SessionInfo, address: str) -> Session:
    """The HTTP description of a worker's SessionInfo."""
    return Session(
        id=public_id(address, info.session_id),
        model=info.model,
        length=info.length,
        turns=len(info.turn_ends),
        turn_ends=list(info.turn_ends),
        expires_at=info.expires_unix_ms // 1000,
        ttl_s=info.ttl_s,
        kv_tier=_TIERS.get(info.kv_tier, "transcript"),
        busy=info.busy,
        worker=address,
    )


async def _on_home(
    dispatcher: Dispatcher,
    request: Request,
    session_id: str,
    call: Any,
) -> tuple[Any, str]:
    """Run ``call(stub, worker_id, timeout)`` on the session's home worker."""
    address, worker_id = parse_id(session_id)
    route = RouteRequest(model="", home=address)
    routed = Routed()
    request.state.routed = routed

    async def run(client: AsyncInferenceClient, timeout: float) -> Any:
        return await call(session_stub(client), worker_id, timeout)

    result = await dispatcher.unary(request, route, run, routed)
    return result, address


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
    log_unknown_fields(body, request)
    address, worker_id = parse_id(session_id)
    proto = translate.chat_request(body)
    proto.session.session_id = worker_id
    route = RouteRequest(model=proto.model, home=address)
    return await run_chat(body, proto, route, Routed(), request, response, dispatcher)
