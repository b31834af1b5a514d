"""Checks that a real worker still serves as it did: health, an idle load and greedy output.

The fuzzing, disconnect-storm and soak tests end with these: whatever was thrown at the
worker, it is alive, nothing of it is left running or queued, and a greedy request gives the
same text as before.
"""

from __future__ import annotations

import time

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

Stub = pb_grpc.InferenceServiceStub
#: Worker flags for a test whose own processes (clients, a gateway) share the cores with the
#: worker. llama.cpp's threads wait for each other many times in every decode, so two threads
#: on two busy cores spend most of their time waiting (requests measured 4 to 10 times slower
#: than with one thread); one thread shares the cores without waiting on anyone.
ONE_THREAD = ("--n-threads", "1")
#: The greedy request whose answer must not change.
GREEDY_PROMPT = "Name three colors and say why you like each."
GREEDY_TOKENS = 16


def connect(target: str) -> tuple[grpc.Channel, Stub]:
    """A ready channel to a worker and its stub."""
    channel = grpc.insecure_channel(target, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=60)
    return channel, pb_grpc.InferenceServiceStub(channel)


def greedy_request() -> pb.GenerateRequest:
    """The chat request whose greedy answer is compared before and after."""
    message = pb.ChatMessage(role="user", content=GREEDY_PROMPT)
    sampling = pb.SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS)
    return pb.GenerateRequest(chat=pb.ChatConversation(messages=[message]), sampling=sampling)


def greedy(stub: Stub) -> str:
    """The greedy answer to GREEDY_PROMPT, over gRPC."""
    text = []
    for message in stub.Generate(greedy_request(), timeout=120):
        text.append(message.chunk.text)
    return "".join(text)


def health(channel: grpc.Channel) -> int:
    """The worker's overall grpc.health.v1 status."""
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)


def idle(load: pb.GetLoadResponse) -> bool:
    """No generation running or waiting, and no embedding input waiting."""
    return not (load.active_requests or load.queued_requests or load.embed_queued_inputs)


def wait_idle(stub: Stub, timeout: float = 30.0) -> pb.GetLoadResponse:
    """The worker's load once it is idle. A cancelled call leaves the engine within one step of
    the server noticing, so this waits for that rather than asserting at once; a worker that
    stays busy for ``timeout`` seconds fails the test."""
    deadline = time.monotonic() + timeout
    load = stub.GetLoad(pb.GetLoadRequest(), timeout=10)
    while not idle(load) and time.monotonic() < deadline:
        time.sleep(0.05)
        load = stub.GetLoad(pb.GetLoadRequest(), timeout=10)
    assert idle(load), f"the worker is not idle after {timeout} s:\n{load}"
    return load


def assert_serving(channel: grpc.Channel, stub: Stub, baseline: str) -> pb.GetLoadResponse:
    """The worker is SERVING, idle, and gives the baseline greedy answer; returns its load."""
    assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    load = wait_idle(stub)
    assert greedy(stub) == baseline
    return load


def gateway_metric(base_url: str, name: str) -> list[float]:
    """Every sample of a gateway metric whose line starts with ``name``."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]


#: The gateway's count of calls in flight on each worker.
IN_FLIGHT = "llamagrid_gateway_worker_in_flight{"


def wait_no_call_in_flight(base_url: str, timeout: float = 30.0) -> None:
    """Wait until a gateway with one worker counts no call in flight on it (it counts a
    dropped stream's call until the worker has ended it)."""
    deadline = time.monotonic() + timeout
    while gateway_metric(base_url, IN_FLIGHT) != [0.0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway_metric(base_url, IN_FLIGHT) == [0.0]
