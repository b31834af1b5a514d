"""The llamagrid.v1.SessionService implementation: sessions kept by the engine
(engine/sessions.py), their errors mapped as every other engine error is (rpc/status.py)."""

from __future__ import annotations

from typing import Any

import grpc

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.engine.errors import EngineError
from llamagrid.worker.engine.llama_engine import Engine
from llamagrid.worker.engine.reports import SessionReport
from llamagrid.worker.engine.requests import ImageInput
from llamagrid.worker.rpc.servicer import abort, check_model
from llamagrid.worker.rpc.translate import session_to_proto

Context = grpc.aio.ServicerContext[Any, Any]


class SessionService(pb_grpc.SessionServiceServicer):
    """Opens, describes, forks, rolls back and closes the engine's sessions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _info(self, report: SessionReport) -> pb.SessionInfo:
        info = session_to_proto(report)
        info.model = self.engine.description().alias
        return info

    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: Context
    ) -> pb.OpenSessionResponse:
        """A new session, empty or resuming from the given transcript."""
        try:
            check_model(self.engine, request.model)
            transcript = request.transcript
            report = await self.engine.open_session(
                request.ttl_s,
                list(transcript.token_ids),
                list(transcript.turn_ends),
                [(i.start, ImageInput(i.image.data, i.image.mime_type)) for i in transcript.images],
            )
            return pb.OpenSessionResponse(session=self._info(report))
        except EngineError as exc:
            await abort(context, exc)

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        """A session's description, and its transcript when asked."""
        try:
            report = await self.engine.describe_session(request.session_id, request.with_transcript)
        except EngineError as exc:
            await abort(context, exc)
        out = pb.GetSessionResponse(session=self._info(report))
        if report.tokens is not None:
            out.transcript.token_ids.extend(report.tokens)
            out.transcript.turn_ends.extend(report.turn_ends)
            for placed in report.placed:
                image = pb.Image(data=placed.image.data, mime_type=placed.image.mime_type)
                out.transcript.images.add(start=placed.start, image=image)
        return out

    async def ForkSession(
        self, request: pb.ForkSessionRequest, context: Context
    ) -> pb.ForkSessionResponse:
        """A new session with the first turns of another."""
        try:
            report = await self.engine.fork_session(
                request.session_id, request.turns, request.ttl_s
            )
            return pb.ForkSessionResponse(session=self._info(report))
        except EngineError as exc:
            await abort(context, exc)

    async def RollbackSession(
        self, request: pb.RollbackSessionRequest, context: Context
    ) -> pb.RollbackSessionResponse:
        """The session with only its first turns."""
        try:
            report = await self.engine.rollback_session(request.session_id, request.turns)
            return pb.RollbackSessionResponse(session=self._info(report))
        except EngineError as exc:
            await abort(context, exc)

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> pb.CloseSessionResponse:
        """Delete the session."""
        try:
            await self.engine.close_session(request.session_id)
        except EngineError as exc:
            await abort(context, exc)
        return pb.CloseSessionResponse()

    async def CancelTurn(
        self, request: pb.CancelTurnRequest, context: Context
    ) -> pb.CancelTurnResponse:
        """Cancel the session's running turn, if one runs."""
        try:
            cancelled = await self.engine.cancel_turn(request.session_id)
        except EngineError as exc:
            await abort(context, exc)
        return pb.CancelTurnResponse(cancelled=cancelled)
