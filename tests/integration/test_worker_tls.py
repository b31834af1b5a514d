"""Worker TLS, mTLS and the per-call token on real workers, with certificates made by the test.

Three workers: TLS only; mTLS with a token and a plaintext health port; plaintext with a token
and at most 2 concurrent streams per connection. Then the gateway in front of the mTLS worker,
and `llamagrid serve` with supervisor.worker_tls and a token file in its config.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from llamagrid.client import AsyncInferenceClient
from llamagrid.grpc_options import channel_options
from llamagrid.security import ChannelSecurity, sync_channel
from llamagrid.sync_client import InferenceClient
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.certs import Certs, make_certs
from tests.fleet import children, cmdline, environ, free_block, start_supervisor, stop_supervisor
from tests.procs import (
    Proc,
    free_port,
    running,
    spawn_gateway,
    spawn_worker,
    wait_http_ok,
    wait_serving,
)

TOKEN = "worker-token-5f2c9a0e7d"
SMALL = ("--n-ctx", "1024", "--parallel", "2")
CHAT = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 8,
    "temperature": 0,
}
HEALTH = health_pb2.HealthCheckRequest()


def prompt(text: str = "The capital of France is", max_tokens: int = 4) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt=text, sampling=pb.SamplingParams(temperature=0.0, max_tokens=max_tokens)
    )


def wait_serving_secure(proc: Proc, security: ChannelSecurity, timeout: float = 120.0) -> None:
    """Until the worker's health (over its TLS port) says SERVING; fail if it exited."""
    channel, _ = sync_channel(proc.target, channel_options(), security)
    deadline = time.monotonic() + timeout
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"worker exited:\n{proc.log_text()}")
            with contextlib.suppress(grpc.RpcError):
                if health.Check(HEALTH, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"worker {proc.target} not SERVING:\n{proc.log_text()}")


async def code_of(call: Any) -> grpc.StatusCode:
    """The status code of an awaitable call that is expected to fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "worker-token"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def tls_worker(run_dir: Path, certs: Certs) -> Iterator[Proc]:
    """TLS, no client certificates, no token."""
    args = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    with running(spawn_worker(run_dir, *SMALL, *args)) as proc:
        wait_serving_secure(proc, ChannelSecurity.create(root_ca=certs.ca))
        yield proc


@pytest.fixture(scope="module")
def mtls_worker(run_dir: Path, certs: Certs, token_file: Path) -> Iterator[tuple[Proc, int]]:
    """mTLS, the token from a file, and a plaintext health port (the worker and that port)."""
    health_port = free_port()
    args = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    args += ("--tls-client-ca", str(certs.ca), "--token-file", str(token_file))
    args += ("--health-port", str(health_port))
    with running(spawn_worker(run_dir, *SMALL, *args)) as proc:
        wait_serving(f"127.0.0.1:{health_port}")
        yield proc, health_port


@pytest.fixture(scope="module")
def token_worker(run_dir: Path) -> Iterator[Proc]:
    """Plaintext, the token from the environment, 2 concurrent streams per connection."""
    args = ("--max-concurrent-streams", "2")
    with running(
        spawn_worker(run_dir, *SMALL, *args, env={"LLAMAGRID_WORKER_TOKEN": TOKEN})
    ) as proc:
        wait_serving(proc)
        yield proc


def mtls_client(proc: Proc, certs: Certs, **extra: Any) -> AsyncInferenceClient:
    options = {
        "root_ca": certs.ca,
        "client_cert": certs.client_cert,
        "client_key": certs.client_key,
    }
    return AsyncInferenceClient(proc.target, **{**options, **extra})


# Plaintext and TLS.


async def test_a_plaintext_worker_serves_plaintext_clients_as_before(worker: Proc) -> None:
    async with AsyncInferenceClient(worker.target) as client:
        assert (await client.get_load(timeout=30)).slots == 4
    async with AsyncInferenceClient(worker.target, tls=True) as client:
        assert await code_of(client.get_load(timeout=30)) == grpc.StatusCode.UNAVAILABLE


async def test_a_tls_worker_serves_clients_that_trust_its_ca(
    tls_worker: Proc, certs: Certs
) -> None:
    async with AsyncInferenceClient(tls_worker.target, root_ca=str(certs.ca)) as client:
        texts = [r.chunk.text async for r in client.generate(prompt(), timeout=60)]
        assert "".join(texts).strip()
    # The blocking client, the CA as bytes, the name the certificate holds given explicitly.
    with InferenceClient(
        tls_worker.target, root_ca=certs.ca.read_bytes(), server_name="localhost"
    ) as sync:
        assert sync.get_model_info(pb.GetModelInfoRequest(), timeout=30).info.alias == "smollm2"


async def test_a_tls_worker_refuses_plaintext_and_unverified_clients(
    tls_worker: Proc, certs: Certs
) -> None:
    refused = [
        AsyncInferenceClient(tls_worker.target),  # plaintext
        AsyncInferenceClient(tls_worker.target, tls=True),  # the system's roots
        AsyncInferenceClient(tls_worker.target, root_ca=certs.other_ca),  # another CA
        AsyncInferenceClient(tls_worker.target, root_ca=certs.ca, server_name="not-the-worker"),
    ]
    for client in refused:
        async with client:
            assert await code_of(client.get_load(timeout=30)) == grpc.StatusCode.UNAVAILABLE
    async with AsyncInferenceClient(tls_worker.target, root_ca=certs.ca) as client:
        assert (await client.get_load(timeout=30)).slots == 2  # still serving


# mTLS and the token.


async def test_mtls_accepts_the_client_certificate_and_refuses_no_or_a_strangers(
    mtls_worker: tuple[Proc, int], certs: Certs
) -> None:
    proc, _ = mtls_worker
    async with mtls_client(proc, certs, token=TOKEN) as client:
        assert (await client.get_load(timeout=30)).slots == 2
        assert (await client.list_models(timeout=30)).models[0].alias == "smollm2"
    stranger = {"client_cert": certs.stranger_cert, "client_key": certs.stranger_key}
    for client in (
        AsyncInferenceClient(proc.target, root_ca=certs.ca, token=TOKEN),  # no certificate
        mtls_client(proc, certs, token=TOKEN, **stranger),  # signed by another CA
    ):
        async with client:
            assert await code_of(client.get_load(timeout=30)) == grpc.StatusCode.UNAVAILABLE
            health = health_pb2_grpc.HealthStub(client.channel)
            assert await code_of(health.Check(HEALTH, timeout=30)) == grpc.StatusCode.UNAVAILABLE


async def test_the_token_guards_every_call_but_health(
    mtls_worker: tuple[Proc, int], certs: Certs
) -> None:
    proc, _ = mtls_worker
    for token in (None, "not-the-token", TOKEN + "0"):
        async with mtls_client(proc, certs, token=token) as client:
            unauthenticated = grpc.StatusCode.UNAUTHENTICATED
            assert await code_of(client.get_load(timeout=30)) == unauthenticated
            assert await code_of(client.list_models(timeout=30)) == unauthenticated
            stream = client.generate(prompt(), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stream.admitted()
            assert caught.value.code() == unauthenticated
            # Health is open to any client that passed the TLS handshake.
            health = health_pb2_grpc.HealthStub(client.channel)
            reply = await health.Check(HEALTH, timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with mtls_client(proc, certs, token=TOKEN) as client:
        texts = [r.chunk.text async for r in client.generate(prompt(), timeout=60)]
        assert "".join(texts).strip()


def test_reflection_needs_the_token(mtls_worker: tuple[Proc, int], certs: Certs) -> None:
    proc, _ = mtls_worker
    pem = {"root_ca": certs.ca, "client_cert": certs.client_cert, "client_key": certs.client_key}
    with InferenceClient(proc.target, **pem) as anonymous:
        with pytest.raises(grpc.RpcError) as caught:
            list(ProtoReflectionDescriptorDatabase(anonymous.channel).get_services())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    with InferenceClient(proc.target, token=TOKEN, **pem) as client:
        services = set(ProtoReflectionDescriptorDatabase(client.channel).get_services())
        assert "llamagrid.v1.InferenceService" in services


async def test_the_health_port_serves_health_alone_in_plaintext(
    mtls_worker: tuple[Proc, int],
) -> None:
    """What a Kubernetes gRPC probe (no TLS, no metadata) can reach, and nothing more."""
    _, health_port = mtls_worker
    async with AsyncInferenceClient(f"127.0.0.1:{health_port}", token=TOKEN) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        assert (await health.Check(HEALTH, timeout=30)).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        assert await code_of(client.get_load(timeout=30)) == grpc.StatusCode.UNIMPLEMENTED


async def test_a_plaintext_worker_with_a_token(token_worker: Proc) -> None:
    async with AsyncInferenceClient(token_worker.target, token=TOKEN) as client:
        assert (await client.get_load(timeout=30)).slots == 2
    async with AsyncInferenceClient(token_worker.target) as client:
        assert await code_of(client.get_load(timeout=30)) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "Bearer " + "A" * 7000),),  # near gRPC's 8 KiB metadata limit
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", TOKEN),),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer x")),
        (("authorization", f"Bearer {TOKEN[:-1]}"),),
    ],
    ids=["huge", "basic", "no-scheme", "two-values", "prefix"],
)
async def test_hostile_authorization_metadata_is_refused_and_the_worker_serves_on(
    token_worker: Proc, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with grpc.aio.insecure_channel(token_worker.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        call = stub.Tokenize(pb.TokenizeRequest(text="hello"), metadata=metadata, timeout=30)
        assert await code_of(call) == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", f"bearer {TOKEN}"),)  # the scheme is case-insensitive
        reply = await stub.Tokenize(pb.TokenizeRequest(text="hello"), metadata=good, timeout=30)
        assert list(reply.token_ids)


async def test_concurrent_streams_per_connection_are_bounded(token_worker: Proc) -> None:
    """With --max-concurrent-streams 2, two open health watches fill a connection: a third call
    on it waits (here until its deadline), while the same call on another connection is
    answered; once a watch ends, the third call goes through on the first connection."""
    separate = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
    async with (
        AsyncInferenceClient(token_worker.target, token=TOKEN) as client,
        # Channels with the same target and options share a connection: not this one.
        AsyncInferenceClient(token_worker.target, separate, token=TOKEN) as other,
    ):
        await client.get_load(timeout=30)  # connected; the server's settings have arrived
        watches = [client.watch_health(), client.watch_health()]
        for watch in watches:
            assert await anext(watch) is True  # both streams are open on the worker
        assert await code_of(client.get_load(timeout=3)) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (await other.get_load(timeout=30)).slots == 2
        await watches[0].aclose()
        assert (await asyncio.wait_for(client.get_load(timeout=30), 30)).slots == 2
        await watches[1].aclose()


# The gateway in front of the mTLS worker.


def gateway_flags(certs: Certs) -> list[str]:
    return [
        "--worker-ca",
        str(certs.ca),
        "--worker-client-cert",
        str(certs.client_cert),
        "--worker-client-key",
        str(certs.client_key),
    ]


def test_the_gateway_serves_chat_from_an_mtls_worker_with_a_token(
    run_dir: Path, mtls_worker: tuple[Proc, int], certs: Certs, token_file: Path
) -> None:
    proc, _ = mtls_worker
    extra = [*gateway_flags(certs), "--worker-token-file", str(token_file)]
    with running(spawn_gateway(run_dir, proc.target, extra=extra)) as gateway:
        url = f"http://127.0.0.1:{gateway.port}"
        wait_http_ok(f"{url}/health", timeout=60)
        reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
    assert TOKEN not in gateway.log_text()


def test_a_gateway_without_the_worker_token_routes_nothing_and_says_why(
    run_dir: Path, mtls_worker: tuple[Proc, int], certs: Certs
) -> None:
    """Its health watch gets through (health needs no token) but ListModels does not: the
    worker never joins the pool. (A worker that starts refusing later gives 502s:
    tests/unit/test_gateway_errors.py.)"""
    proc, _ = mtls_worker
    with running(spawn_gateway(run_dir, proc.target, extra=gateway_flags(certs))) as gateway:
        deadline = time.monotonic() + 60
        while "refused the gateway's worker token" not in gateway.log_text():
            assert time.monotonic() < deadline, gateway.log_text()
            time.sleep(0.1)
        url = f"http://127.0.0.1:{gateway.port}"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=120)
        assert reply.status_code == 503, reply.text


# `llamagrid serve` with worker TLS in its config.


def test_serve_runs_an_mtls_fleet_from_its_config_with_secrets_off_every_command_line(
    tmp_path: Path, certs: Certs, token_file: Path
) -> None:
    port, base = free_port(), free_block(1)
    tls = {"cert": str(certs.server_cert), "key": str(certs.server_key), "ca": str(certs.ca)}
    tls |= {"client_ca": str(certs.ca), "client_cert": str(certs.client_cert)}
    tls |= {"client_key": str(certs.client_key), "server_name": "localhost"}
    config = {
        "gateway": {"host": "127.0.0.1", "port": port},
        "supervisor": {"base_port": base, "worker_tls": tls, "worker_token_file": str(token_file)},
        "models": [{"alias": "smollm2", "n_ctx": 1024, "parallel": 1, "n_threads": 1}],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "supervisor.log"
    popen = start_supervisor(path, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", timeout=180)
        reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=120)
        assert reply.status_code == 200, reply.text
        pids = children(popen.pid)
        assert len(pids) == 2
        secrets = [TOKEN, str(token_file), *(str(p) for p in vars(certs).values())]
        roles = {}
        for pid in pids:
            text = "\0".join(cmdline(pid))
            assert not [s for s in secrets if s in text], text
            roles["gateway" if "llamagrid.gateway" in text else "worker"] = environ(pid)
        assert roles["worker"]["LLAMAGRID_WORKER_TLS_CLIENT_CA"] == str(certs.ca)
        assert roles["gateway"]["LLAMAGRID_GATEWAY_WORKER_TOKEN_FILE"] == str(token_file)
        # The worker really is behind mTLS and the token.
        worker = f"127.0.0.1:{base}"
        with InferenceClient(worker) as plain, pytest.raises(grpc.RpcError) as caught:
            plain.get_load(timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        pem = {"root_ca": certs.ca, "client_cert": certs.client_cert}
        with InferenceClient(worker, client_key=certs.client_key, token=TOKEN, **pem) as client:
            assert client.get_load(timeout=30).slots == 1
    finally:
        stop_supervisor(popen)
    assert popen.returncode == 0, log.read_text()[-3000:]
    assert TOKEN not in log.read_text()
