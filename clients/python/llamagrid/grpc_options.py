"""Channel and server options shared by every llamagrid gRPC peer written in Python.

Both ends must agree on message size and keepalive: a client that pings more often than the
server allows gets GOAWAY ``too_many_pings``.
"""

from __future__ import annotations

#: The largest message either end sends or accepts: 64 MiB, enough for a batch of a thousand
#: 4096-wide float embeddings.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: A client pings an idle connection this often (milliseconds).
CLIENT_KEEPALIVE_TIME_MS = 30_000
#: The server accepts pings this close together (milliseconds); lower than the client's period.
SERVER_MIN_PING_INTERVAL_MS = 10_000
#: How long to wait for a ping's answer before the connection is considered dead.
KEEPALIVE_TIMEOUT_MS = 10_000
#: The longest wait between reconnection attempts, so a restarted worker is found quickly
#: (gRPC's default grows to two minutes).
MAX_RECONNECT_BACKOFF_MS = 5_000

ChannelOptions = list[tuple[str, int]]


def channel_options(
    keepalive_time_ms: int = CLIENT_KEEPALIVE_TIME_MS,
    keepalive_timeout_ms: int = KEEPALIVE_TIMEOUT_MS,
) -> ChannelOptions:
    """Options for a client channel to a llamagrid worker.

    A dead peer (a lost link, a crashed host) is noticed within about ``keepalive_time_ms`` plus
    ``keepalive_timeout_ms``; lower both to notice it sooner (the server tolerates any rate).
    """
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


def server_options() -> ChannelOptions:
    """Options for a llamagrid worker's gRPC server."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
    ]
