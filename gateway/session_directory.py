"""Where each session lives, and the gateway's copy of its transcript.

A session lives on one worker (its home), which keeps its transcript (worker/engine/sessions.py).
Its public id names that worker, so any gateway routes the session's calls home without shared
state: ``lgs.<worker address, base64url>.<the worker's own id>``. The gateway also keeps a copy of
every session's transcript, images included, in its session store (gateway/session_store.py), so
that a session outlives its worker: ``SessionDirectory`` records each committed turn and, when
the home is lost, reopens the session on another worker from the copy.
"""

from __future__ import annotations

import base64
import binascii
import logging
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc
from fastapi import Request

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.dispatch import Resume
from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.pool import WorkerPool
from llamagrid.gateway.session_store import SessionImage, SessionRecord, SessionStore
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: What a public session id starts with.
ID_PREFIX = "lgs"

if TYPE_CHECKING:  # the async stub type exists only in the type stubs
    Stub = pb_grpc.SessionServiceAsyncStub


def session_stub(client: AsyncInferenceClient) -> Stub:
    """A SessionService stub on a worker client's channel (its TLS and token included)."""
    return pb_grpc.SessionServiceStub(client.channel)


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


def session_lost() -> OpenAIError:
    """The 404 for a session whose worker is gone with no copy of its transcript to resume."""
    return OpenAIError(
        404,
        "The worker that held this session is gone, and the gateway's session store holds no "
        "copy of its transcript: the session is lost.",
        param="session_id",
        code="session_lost",
    )


def transcript_of(record: SessionRecord) -> pb.SessionTranscript:
    """The transcript a stored record reopens its session with."""
    images = [
        pb.TranscriptImage(start=i.start, image=pb.Image(data=i.data, mime_type=i.mime_type))
        for i in record.images
    ]
    return pb.SessionTranscript(
        token_ids=record.tokens.tolist(), turn_ends=record.turn_ends.tolist(), images=images
    )


class SessionDirectory:
    """Where each session is, and the gateway's copy of its transcript (gateway/session_store.py).

    A session's home is its store record's, else the worker its id names. Every committed turn
    is added to the copy (``committed``); when the home is lost, ``resume`` reopens the session
    on another worker from the copy and records the move, so the session keeps its id.
    """

    def __init__(self, store: SessionStore, pool: WorkerPool) -> None:
        self.store = store
        self.pool = pool

    async def locate(self, session_id: str) -> tuple[str, str]:
        """The session's home address and its id there."""
        record = await self.store.get(session_id, transcript=False)
        if record is not None:
            return record.home, record.worker_id
        return parse_id(session_id)

    async def model_of(self, session_id: str) -> str | None:
        """The session's model: its record's, else the one model its home worker serves (None
        when neither is known)."""
        record = await self.store.get(session_id, transcript=False)
        if record is not None:
            return record.model
        home = self.pool.get(parse_id(session_id)[0])
        if home is None or len(home.models) != 1:
            return None
        return next(iter(home.models))

    async def sync(self, session_id: str, model: str, address: str, worker_id: str) -> None:
        """Copy the session's whole transcript from its worker (after a fork or a rollback, or
        when the copy and the worker disagree)."""
        worker = self.pool.get(address)
        if worker is None:
            return
        request = pb.GetSessionRequest(session_id=worker_id, with_transcript=True)
        reply = await session_stub(worker.client).GetSession(request, timeout=30)
        record = SessionRecord(
            model=model or reply.session.model,
            home=address,
            worker_id=worker_id,
            ttl_s=reply.session.ttl_s,
            tokens=array("i", reply.transcript.token_ids),
            turn_ends=array("i", reply.transcript.turn_ends),
            images=[
                SessionImage(i.start, i.image.data, i.image.mime_type)
                for i in reply.transcript.images
            ],
        )
        await self.store.put(session_id, record)

    async def opened(self, session_id: str, model: str, address: str, info: pb.SessionInfo) -> None:
        """Record a new, empty session."""
        record = SessionRecord(model, address, info.session_id, info.ttl_s)
        await self.store.put(session_id, record)

    async def committed(
        self,
        session_id: str,
        model: str,
        address: str,
        final: pb.GenerateFinal,
        images: Sequence[pb.Image] = (),
    ) -> None:
        """Add a committed turn and its ``images`` (the request's, in order) to the copy (or copy
        the whole transcript if they disagree)."""
        commit = final.session
        appended = list(commit.appended_token_ids)
        starts = commit.image_starts
        if len(starts) == len(images):
            turn = [
                SessionImage(start, image.data, image.mime_type)
                for start, image in zip(starts, images, strict=True)
            ]
            if await self.store.append(session_id, commit.length - len(appended), appended, turn):
                return
        _, worker_id = await self.locate(session_id)
        try:
            await self.sync(session_id, model, address, worker_id)
        except grpc.aio.AioRpcError as error:  # the turn stands; only the copy lags
            log.warning("could not copy session %s's transcript: %s", session_id, error.code())

    def resumer(self, session_id: str, moved: Callable[[str], None] | None = None) -> Resume:
        """What the dispatcher calls when the session's home is lost; ``moved`` is told the
        session's new id on its new worker."""

        async def resume() -> tuple[str, str]:
            record = await self.store.get(session_id)
            if record is None:
                raise session_lost()
            old = self.pool.get(record.home)
            choice = self.pool.select(
                RouteRequest(record.model, new_session=True),
                exclude=[old] if old is not None else [],
            )
            request = pb.OpenSessionRequest(
                model=record.model, ttl_s=record.ttl_s, transcript=transcript_of(record)
            )
            reply = await session_stub(choice.worker.client).OpenSession(request, timeout=60)
            choice.worker.sessions_opened += 1
            record.home, record.worker_id = choice.worker.address, reply.session.session_id
            await self.store.put(session_id, record)
            if moved is not None:
                moved(record.worker_id)
            return record.home, record.worker_id

        return resume

    async def forget(self, session_id: str) -> None:
        """The session was deleted."""
        await self.store.delete(session_id)


def get_directory(request: Request) -> SessionDirectory:
    """The app's session directory (set by create_app)."""
    directory = request.app.state.sessions
    assert isinstance(directory, SessionDirectory)
    return directory


def request_images(proto: pb.GenerateRequest) -> list[pb.Image]:
    """A Generate request's images, in the order it gives them: its messages' image parts, or
    the images of its raw prompt."""
    if proto.WhichOneof("input") == "chat":
        return [
            part.image
            for message in proto.chat.messages
            for part in message.parts
            if part.HasField("image")
        ]
    return list(proto.images)
