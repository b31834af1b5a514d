"""Start each benchmarked server fresh with the same model, threads, slots and context per slot."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from bench import procs
from bench.config import ROOT, Config

Protocol = Literal["http", "grpc"]


class TargetSkipped(Exception):
    """A target that cannot run on this machine; the message says why."""


@dataclass
class Server:
    """A started target: where to send requests and which processes to watch."""

    name: str
    protocol: Protocol
    address: str
    children: list[procs.Child] = field(default_factory=list)
    model: str = ""
    #: Fields added to every chat request body (HTTP targets).
    extra_body: dict[str, Any] = field(default_factory=dict)
    #: How completion tokens are counted and any deviation from the server's defaults.
    notes: list[str] = field(default_factory=list)
    #: gRPC addresses of the workers behind a gateway, in start order (fleets only).
    workers: list[str] = field(default_factory=list)

    def commands(self) -> dict[str, str]:
        """The command line of each process, by label."""
        return {c.label: " ".join(c.argv) for c in self.children}


def _http_model_id(base_url: str) -> str:
    reply = httpx.get(f"{base_url}/v1/models", timeout=10)
    reply.raise_for_status()
    return str(reply.json()["data"][0]["id"])


def start_worker(
    server: Server,
    log_dir: Path,
    model: Path,
    *,
    threads: int,
    slots: int,
    n_ctx: int,
    label: str = "worker",
    extra: tuple[str, ...] = (),
) -> str:
    """Start one worker process for server; returns its gRPC address once it is SERVING."""
    port_file = log_dir / f"{label}.port"
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "llamagrid.worker", "--model", str(model)]
    argv += ["--port", "0", "--port-file", str(port_file)]
    argv += ["--n-threads", str(threads), "--n-threads-batch", str(threads)]
    argv += ["--parallel", str(slots), "--n-ctx", str(n_ctx), *extra]
    worker = procs.launch(label, argv, log_dir)
    server.children.append(worker)
    port = procs.wait_port_file(port_file, worker)
    target = f"127.0.0.1:{port}"
    procs.wait_grpc_serving(target, worker)
    return target


def _start_worker(cfg: Config, server: Server, log_dir: Path) -> str:
    return start_worker(
        server, log_dir, cfg.model, threads=cfg.threads, slots=cfg.slots, n_ctx=cfg.n_ctx
    )


def _start_llamagrid_http(cfg: Config, server: Server, log_dir: Path) -> None:
    target = _start_worker(cfg, server, log_dir)
    port = procs.free_port()
    argv = [sys.executable, "-m", "llamagrid.gateway", "--worker", target]
    _serve_openai_http("gateway", argv, port, server, log_dir)


def _start_llamagrid_grpc(cfg: Config, server: Server, log_dir: Path) -> None:
    server.address = _start_worker(cfg, server, log_dir)
    server.notes.append("tokens: len(chunk.token_ids) (ignore_eos=True)")


def _start_llama_cpp_python_server(cfg: Config, server: Server, log_dir: Path) -> None:
    port = procs.free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(cfg.model)]
    argv += ["--n_threads", str(cfg.threads), "--n_threads_batch", str(cfg.threads)]
    # One sequence at a time, so its whole context is one slot's worth.
    argv += ["--n_ctx", str(cfg.ctx_per_slot), "--host", "127.0.0.1", "--port", str(port)]
    # The default (True) ends a running stream as soon as another request waits: under
    # concurrency every stream would stop after a token or two.
    argv += ["--interrupt_requests", "False"]
    child = procs.launch("server", argv, log_dir)
    server.children.append(child)
    server.address = f"http://127.0.0.1:{port}"
    procs.wait_http_ok(f"{server.address}/v1/models", child)
    server.model = _http_model_id(server.address)
    server.extra_body = {"min_tokens": cfg.max_tokens}
    server.notes += [
        "no ignore_eos and no usage when streaming: min_tokens=max_tokens keeps EOS out; "
        "tokens = max_tokens when finish_reason is 'length', else one per content chunk",
        "--interrupt_requests False (its default aborts streams under concurrency)",
        f"--n_ctx {cfg.ctx_per_slot}: it serves one request at a time",
    ]


def llama_server_binary() -> str:
    """Path of llama-server, built (or found cached) by bench/build_llama_server.sh."""
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "bench" / "build_llama_server.sh")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TargetSkipped(f"build_llama_server.sh did not run: {e}") from e
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TargetSkipped(f"build_llama_server.sh failed (exit {done.returncode}): {why}")
    return lines[-1]


def _start_llama_server(cfg: Config, server: Server, log_dir: Path) -> None:
    binary = llama_server_binary()
    port = procs.free_port()
    argv = [binary, "-m", str(cfg.model), "-t", str(cfg.threads), "-tb", str(cfg.threads)]
    argv += ["-np", str(cfg.slots), "-c", str(cfg.n_ctx), "--no-webui"]
    _serve_openai_http("server", argv, port, server, log_dir)


def _serve_openai_http(
    name: str, argv: list[str], port: int, server: Server, log_dir: Path
) -> None:
    """Launch an OpenAI-compatible server that honours ignore_eos and streamed usage."""
    argv = [*argv, "--host", "127.0.0.1", "--port", str(port)]
    child = procs.launch(name, argv, log_dir)
    server.children.append(child)
    server.address = f"http://127.0.0.1:{port}"
    procs.wait_http_ok(f"{server.address}/health", child)
    server.model = _http_model_id(server.address)
    server.extra_body = {"ignore_eos": True, "stream_options": {"include_usage": True}}
    server.notes.append("tokens: usage.completion_tokens (ignore_eos: true)")


_STARTERS: dict[str, tuple[Protocol, Callable[[Config, Server, Path], None]]] = {
    "llamagrid-http": ("http", _start_llamagrid_http),
    "llamagrid-grpc": ("grpc", _start_llamagrid_grpc),
    "llama-cpp-python-server": ("http", _start_llama_cpp_python_server),
    "llama-server": ("http", _start_llama_server),
}


@contextmanager
def _running(
    name: str, protocol: Protocol, start: Callable[[Server, Path], None]
) -> Iterator[Server]:
    """Run start; stop every process it started on exit, error or interrupt."""
    log_dir = Path(tempfile.mkdtemp(prefix=f"llamagrid-bench-{name}-"))
    server = Server(name, protocol, "")
    try:
        start(server, log_dir)
        yield server
    except BaseException:
        print(f"  [{name}] logs kept in {log_dir}", flush=True)
        raise
    finally:
        for child in reversed(server.children):
            procs.stop(child)
    shutil.rmtree(log_dir, ignore_errors=True)


@contextmanager
def serving(name: str, cfg: Config) -> Iterator[Server]:
    """Start target `name` fresh; stop every process it started on exit, error or interrupt."""
    protocol, start = _STARTERS[name]
    with _running(name, protocol, lambda server, log_dir: start(cfg, server, log_dir)) as server:
        yield server


def _wait_workers_available(server: Server, timeout: float = 60.0) -> None:
    """Poll the gateway's /metrics until it counts every worker available."""
    wanted = {f'llamagrid_gateway_worker_available{{worker="{w}"}} 1.0' for w in server.workers}

    def all_available() -> bool:
        try:
            lines = set(httpx.get(f"{server.address}/metrics", timeout=2).text.splitlines())
        except httpx.HTTPError:
            return False
        return wanted <= lines

    procs.poll("every worker available in the gateway", server.children[-1], timeout, all_available)


@contextmanager
def fleet(cfg: Config, policy: str) -> Iterator[Server]:
    """cfg.routing.workers fresh workers behind one fresh gateway routing with `policy`."""
    r = cfg.routing

    def start(server: Server, log_dir: Path) -> None:
        for i in range(r.workers):
            server.workers.append(
                start_worker(
                    server,
                    log_dir,
                    cfg.model,
                    threads=r.threads,
                    slots=r.slots,
                    n_ctx=r.n_ctx,
                    label=f"worker-{i}",
                    extra=("--kv-unified",) if r.kv_unified else (),
                )
            )
        argv = [sys.executable, "-m", "llamagrid.gateway", "--policy", policy]
        for address in server.workers:
            argv += ["--worker", address]
        _serve_openai_http("gateway", argv, procs.free_port(), server, log_dir)
        _wait_workers_available(server)

    with _running(f"routing-{policy}", "http", start) as server:
        yield server
