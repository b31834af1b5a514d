"""Gateway HTTPS and slow-client limits, as configured: flags, main()'s uvicorn configuration,
the startup checks, and `llamagrid serve`'s plan from a fleet file."""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import llamagrid.gateway.main
from llamagrid.fleet.config import load_fleet_config
from llamagrid.fleet.problems import FleetConfigError
from llamagrid.gateway.connections import FD_RESERVE, GuardedH11Protocol, raise_fd_limit
from llamagrid.supervisor.access import ExposureError
from llamagrid.supervisor.plan import fleet_plan
from llamagrid.supervisor.settings import ServeSettings
from tests.certs import Certs, make_certs


@pytest.fixture(autouse=True)
def _no_llamagrid_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LLAMAGRID_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def run_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> Any:
    """main() up to the point where uvicorn would run; uvicorn's configuration."""
    seen: dict[str, Any] = {}

    def fake_run(server: Any) -> None:
        seen["config"] = server.config

    monkeypatch.setattr(llamagrid.gateway.main.DrainingServer, "run", fake_run)
    llamagrid.gateway.main.main(["--worker", "127.0.0.1:50051", *argv])
    return seen["config"]


def test_main_serves_https_and_bounds_slow_clients_as_configured(
    monkeypatch: pytest.MonkeyPatch, certs: Certs
) -> None:
    config = run_main(
        monkeypatch,
        *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
        *("--header-timeout-s", "3", "--send-timeout-s", "4", "--max-connections", "7"),
        *("--keep-alive-timeout-s", "9", "--max-header-bytes", "4096"),
    )
    assert (config.ssl_certfile, config.ssl_keyfile) == (
        str(certs.server_cert),
        str(certs.server_key),
    )
    assert issubclass(config.http, GuardedH11Protocol)
    limits = config.http.header_timeout_s, config.http.send_timeout_s, config.http.max_connections
    assert limits == (3, 4, 7)
    assert (config.timeout_keep_alive, config.h11_max_incomplete_event_size) == (9, 4096)
    config.load()  # builds the TLS context from the files
    assert config.ssl is not None


def test_main_serves_plain_http_with_the_default_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    config = run_main(monkeypatch)
    assert not config.is_ssl
    limits = config.http.header_timeout_s, config.http.send_timeout_s, config.http.max_connections
    assert limits == (10, 60, 1024)
    assert (config.timeout_keep_alive, config.h11_max_incomplete_event_size) == (5, 16384)


@pytest.mark.parametrize("problem", ["wrong key", "missing file"])
def test_main_exits_on_a_certificate_and_key_it_cannot_use(
    monkeypatch: pytest.MonkeyPatch, certs: Certs, tmp_path: Path, problem: str
) -> None:
    key = certs.client_key if problem == "wrong key" else tmp_path / "absent.key"
    with pytest.raises(SystemExit) as info:
        run_main(monkeypatch, "--tls-cert", str(certs.server_cert), "--tls-key", str(key))
    assert str(info.value.code).startswith("llamagrid gateway: --tls-cert/--tls-key: ")


def test_main_exits_on_a_certificate_without_its_key(
    monkeypatch: pytest.MonkeyPatch, certs: Certs
) -> None:
    with pytest.raises(SystemExit) as info:
        run_main(monkeypatch, "--tls-cert", str(certs.server_cert))
    assert "--tls-cert and --tls-key go together" in str(info.value.code)


def fleet_file(tmp_path: Path, gateway: dict[str, Any]) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"gateway": gateway, "models": [{"alias": "m"}]}))
    return path


def test_serve_plans_an_https_gateway_from_the_fleet_file(tmp_path: Path, certs: Certs) -> None:
    tls = {"tls_cert": str(certs.server_cert), "tls_key": str(certs.server_key)}
    config = load_fleet_config(fleet_file(tmp_path, {"port": 8443, **tls}))
    plan = fleet_plan(config, ServeSettings(), cores=4, environ={})
    gateway = next(proc for proc in plan.processes if proc.role == "gateway")
    assert gateway.https and plan.gateway_url == "https://127.0.0.1:8443"
    assert not any(proc.https for proc in plan.processes if proc.role == "worker")
    # The gateway reads the paths from the file it is given: none is on a command line.
    argv = "\0".join(arg for proc in plan.processes for arg in proc.argv)
    assert str(certs.server_key) not in argv and str(certs.server_cert) not in argv
    assert "--config" in gateway.argv


def test_serve_refuses_an_https_pair_it_cannot_use_before_starting_anything(
    tmp_path: Path, certs: Certs
) -> None:
    tls = {"tls_cert": str(certs.server_cert), "tls_key": str(certs.client_key)}
    config = load_fleet_config(fleet_file(tmp_path, tls))
    with pytest.raises(ExposureError, match=re.escape("gateway.tls_cert/tls_key: the certificate")):
        fleet_plan(config, ServeSettings(), cores=4, environ={})
    with pytest.raises(FleetConfigError, match="--tls-cert and --tls-key go together"):
        load_fleet_config(fleet_file(tmp_path, {"tls_cert": str(certs.server_cert)}))


@pytest.fixture
def fd_limits() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_fd_limit_makes_room_for_max_connections_or_a_warning_says_why_not(
    fd_limits: tuple[int, int],
) -> None:
    _, hard = fd_limits
    assert raise_fd_limit(1) is None
    if hard == resource.RLIM_INFINITY or hard < 2 * FD_RESERVE:
        pytest.skip("needs a finite hard limit of a few hundred descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_RESERVE, hard))
    assert raise_fd_limit(hard - FD_RESERVE) is None  # raised up to the hard limit
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    warning = raise_fd_limit(hard)
    assert warning is not None and f"needs {hard + FD_RESERVE} file descriptors" in warning
