"""Slow clients: deadlines for request heads and for unread responses, a cap on connections.

uvicorn's h11 protocol bounds none of these. A connection that sends nothing, half a request
line, or headers without the blank line that ends them stays open for as long as the client
likes: the keep-alive timer runs only between two requests, and any byte stops it. Any number
of such connections may be open, so a few hundred of them (slowloris) hold the gateway's file
descriptors. ``guarded_protocol`` returns uvicorn's h11 protocol with:

- **A head deadline** (``--header-timeout-s``). It is armed when a connection is made and, on a
  kept-alive connection, when the first byte of the next request arrives; it is cancelled once
  the request line and headers are complete. Later bytes do not extend it. When it fires the
  connection is closed: with a 408 if part of a request had arrived, silently if nothing had
  (an idle connection, such as a browser's preconnect).
- **A send deadline** (``--send-timeout-s``). A client that stops reading a response leaves it
  in the gateway's buffers, and a closed connection waits for them to drain: forever, with
  that memory held. Unsent bytes pause the response (the write buffer's high-water mark is one
  byte), and a pause that sees no byte taken by the client for that long drops the connection.
  Over TLS the mark applies to the TLS layer's buffer; the socket's own buffer below it (up to
  64 KiB) is bounded by asyncio's TLS shutdown timeout (30 s) once the connection is closed.
- **A connection cap** (``--max-connections``). A connection made while that many are open gets
  a 503 and is closed at once, before any of its request is read.
- **A head size limit** (``--max-header-bytes``). A request line and headers longer than that
  get a 431 and the connection is closed. h11's own limit (``max_incomplete_event_size``, set to
  the same value) applies only to a head still incomplete after a read, so a head that arrives
  in one read would otherwise be accepted up to the read size (256 KiB).
- **OpenAI-shaped 400s.** A malformed request gets the 400 that uvicorn sends, with a JSON
  error body.

The body's deadline (``--body-timeout-s``) lives in the Admission middleware
(gateway/admission.py), where the body is read. Over HTTPS, uvicorn's protocol starts once the
TLS handshake is done: asyncio gives a handshake 60 s, and connections still in their handshake
are not counted against the cap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from h11._writers import ChunkedWriter
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol, RequestResponseCycle

from llamagrid.gateway.errors import OpenAIError

log = logging.getLogger(__name__)

#: Seconds between two log lines about refused connections (a flood must not flood the log).
REFUSAL_LOG_INTERVAL_S = 10.0
#: The ASGI scope extension that holds a request's DirectBody.
DIRECT_BODY = "llamagrid.direct_body"
#: File descriptors kept beyond --max-connections: gRPC channels to workers, logs, DNS, the
#: listening socket, and the connections being refused.
FD_RESERVE = 256


def too_slow_head(timeout_s: float) -> OpenAIError:
    """The 408 for a request line and headers that took too long."""
    return OpenAIError(
        408,
        f"The request line and headers did not arrive within {timeout_s:g} s "
        "(the gateway's --header-timeout-s).",
        code="request_timeout",
    )


def too_many_connections(limit: int) -> OpenAIError:
    """The 503 for a connection beyond the cap."""
    return OpenAIError(
        503,
        f"The gateway has {limit} open connections, its --max-connections; retry shortly.",
        "service_unavailable_error",
        code="too_many_connections",
        headers={"Retry-After": "1"},
    )


def head_too_large(max_header_bytes: int) -> OpenAIError:
    """The 431 for a request line and headers over the limit."""
    return OpenAIError(
        431,
        f"The request line and headers are larger than {max_header_bytes} bytes "
        "(the gateway's --max-header-bytes).",
        code="request_header_fields_too_large",
    )


def malformed() -> OpenAIError:
    """The 400 for a request h11 cannot parse."""
    return OpenAIError(400, "Invalid HTTP request: it is malformed.", code="invalid_http_request")


class DirectBody:
    """Writes a response's body chunks straight to the socket, below the ASGI send chain.

    A streamed token passes through every middleware's ``send`` wrapper and h11's state machine
    on its way out; this writes the chunk's framing and bytes itself, exactly as h11's chunked
    writer would. It writes only while that is safe (the response has started, h11 frames its
    body as chunks, the connection is open and not paused for a slow client) and otherwise
    returns False: the caller then sends through the ASGI chain, which waits for the client
    (under the send deadline) and ends the response.
    """

    __slots__ = ("_cycle", "_protocol")

    def __init__(self, protocol: H11Protocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle

    def write(self, data: bytes) -> bool:
        """Send ``data`` as one chunk now; False when it must go through the ASGI chain."""
        protocol, cycle = self._protocol, self._cycle
        if (
            not data
            or not cycle.response_started
            or cycle.response_complete
            or cycle.disconnected
            or protocol.flow.write_paused
            or protocol.transport.is_closing()
            or protocol.conn.our_state is not h11.SEND_BODY
            or not isinstance(getattr(protocol.conn, "_writer", None), ChunkedWriter)
        ):
            return False
        protocol.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of the module docstring (``guarded_protocol``
    sets them)."""

    header_timeout_s: float = 10.0
    send_timeout_s: float = 60.0
    max_connections: int = 1024
    #: Loop time of the last warning about a refused connection (shared by all connections).
    last_refusal_log: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # a byte of the awaited request head has arrived
        self._head = bytearray()  # its first bytes (up to the limit), to measure it
        self._send_timer: asyncio.TimerHandle | None = None
        self._unsent = 0  # bytes waiting to be sent when the send deadline was armed
        limit = self.config.h11_max_incomplete_event_size
        self.max_header_bytes = limit or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.max_connections
        super().connection_made(transport)
        if full:
            self.connections.discard(self)
            self._log_refusal()
            self._send_error(too_many_connections(self.max_connections))
            return
        # Any unsent byte pauses writing (see pause_writing). 1, not 0: asyncio's TLS transport
        # pauses at size >= high, so 0 would pause it with nothing to send, for good.
        transport.set_write_buffer_limits(high=1, low=0)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        self._cancel_send_deadline()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client is not taking the response as fast as it comes: start the send deadline."""
        super().pause_writing()
        if self._send_timer is None:
            self._arm_send_deadline()

    def resume_writing(self) -> None:
        self._cancel_send_deadline()
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # refused or timed out: nothing more is parsed
            return
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and self._head_timer is None:  # a new request after a keep-alive wait
            self._arm_head_deadline()
        if self._head_timer is not None:
            self._head_started = True
            # IDLE: h11 awaits a head (not the rest of a body the app left unread).
            if self.conn.their_state is h11.IDLE and self._head_too_large(data):
                self._send_error(head_too_large(self.max_header_bytes))
                return
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head is complete: its cycle has started
            self._cancel_head_deadline()
            if self.cycle is not None:
                extensions: dict[str, Any] = self.cycle.scope.setdefault("extensions", {})
                extensions[DIRECT_BODY] = DirectBody(self, self.cycle)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 for a request h11 cannot parse, with an OpenAI-shaped body."""
        self._send_error(malformed())

    def _head_too_large(self, data: bytes) -> bool:
        """Add ``data`` to the awaited head: is the head over the limit?"""
        start = max(0, len(self._head) - 3)  # the end marker may straddle two reads
        self._head += data[: self.max_header_bytes + 4 - len(self._head)]
        end = self._head.find(b"\r\n\r\n", start)
        return (end if end >= 0 else len(self._head)) > self.max_header_bytes

    def _log_refusal(self) -> None:
        cls, now = type(self), self.loop.time()
        if cls.last_refusal_log is None or now - cls.last_refusal_log >= REFUSAL_LOG_INTERVAL_S:
            cls.last_refusal_log = now
            log.warning(
                "refusing connections: %d are open (--max-connections); next report in %.0f s",
                len(self.connections),
                REFUSAL_LOG_INTERVAL_S,
            )

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_started = False
        self._head.clear()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self._send_error(too_slow_head(self.header_timeout_s))
        else:
            self.transport.close()

    def _arm_send_deadline(self) -> None:
        self._unsent = self.transport.get_write_buffer_size()
        self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_timed_out)

    def _cancel_send_deadline(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent and unsent < self._unsent:  # the client took some: a new deadline
            self._arm_send_deadline()
        elif unsent:  # nothing taken: drop the connection (its stream is cancelled)
            self.transport.abort()

    def _send_error(self, error: OpenAIError) -> None:
        """Answer ``error`` (when no response is under way) and close the connection."""
        body = json.dumps(error.body()).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("connection", "close"),
            *error.headers.items(),
        ]
        status = error.status_code
        try:
            head = h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status])
            output = b"".join(
                self.conn.send(event) or b""
                for event in (head, h11.Data(data=body), h11.EndOfMessage())
            )
        except h11.LocalProtocolError:  # a response is under way (or over): only closing is left
            output = b""
        if output:
            self.transport.write(output)
        self.transport.close()


def guarded_protocol(
    header_timeout_s: float, send_timeout_s: float, max_connections: int
) -> type[GuardedH11Protocol]:
    """The protocol class to give uvicorn (``http=``) for these limits."""
    limits = {
        "header_timeout_s": header_timeout_s,
        "send_timeout_s": send_timeout_s,
        "max_connections": max_connections,
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), limits)


def raise_fd_limit(max_connections: int) -> str | None:
    """Raise this process's soft file-descriptor limit so that ``max_connections`` connections
    fit (up to the hard limit); a warning when they cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        return (
            f"--max-connections {max_connections} needs {needed} file descriptors but the "
            f"limit is {soft} (ulimit -n): connections may fail before the cap refuses them"
        )
    return None
