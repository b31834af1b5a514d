"""What the gateway routes on: the request's model, its leading prompt and its session."""

from __future__ import annotations

from starlette.requests import Request

from llamagrid.gateway.policies import RouteRequest
from llamagrid.v1 import inference_pb2 as pb

#: The header that names a client's session for session_affinity.
SESSION_HEADER = "X-Session-ID"
#: Separators that keep role, name and content of the messages apart in the prefix key.
_FIELD, _RECORD = "\x1f", "\x1e"


def prefix_key(proto: pb.GenerateRequest, chars: int) -> str | None:
    """The first ``chars`` characters of the prompt as sent, or None without a prompt.

    The gateway does not render chat templates (the worker owns them), so a chat is keyed on its
    messages in order. For a fixed template that is the same thing: two conversations share a
    rendered prefix exactly when they share these leading messages.
    """
    kind = proto.WhichOneof("input")
    if kind == "chat":
        parts: list[str] = []
        size = 0
        for message in proto.chat.messages:
            part = f"{message.role}{_FIELD}{message.name}{_FIELD}{message.content}{_RECORD}"
            parts.append(part)
            size += len(part)
            if size >= chars:
                break
        text = "".join(parts)
    elif kind == "prompt":
        text = proto.prompt
    elif kind == "tokens":
        text = ",".join(str(token) for token in proto.tokens.ids[: max(1, chars // 4)])
    else:
        return None
    return text[:chars] or None


def session_key(request: Request, user: str | None) -> str | None:
    """The client's session: the X-Session-ID header, else the OpenAI ``user`` field."""
    return request.headers.get(SESSION_HEADER) or user or None


def generate_route(
    proto: pb.GenerateRequest, request: Request, user: str | None, chars: int
) -> RouteRequest:
    """The routing facts of a Generate call."""
    return RouteRequest(proto.model, prefix_key(proto, chars), session_key(request, user))
