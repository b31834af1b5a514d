"""`llamagrid serve`: keys reach the gateway through its environment, binds are checked before
anything starts, children learn the supervisor's pid (and exit with it)."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import CliApp

import llamagrid.fleet.parent_death as parent_death
from llamagrid.fleet.config import load_fleet_config
from llamagrid.supervisor.access import GATEWAY_KEY_ENV, ExposureError, child_environment
from llamagrid.supervisor.plan import Plan, fleet_plan
from llamagrid.supervisor.serve import build_plan, main
from llamagrid.supervisor.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("sk-first-key", "sk-second-key")
OPEN_GATEWAY = re.escape("refusing to serve the gateway on 0.0.0.0 without an API key")
OPEN_WORKERS = re.escape("refusing to let workers listen on 0.0.0.0")


@pytest.fixture(autouse=True)
def _no_llamagrid_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LLAMAGRID_")]:
        monkeypatch.delenv(name)


def fleet_file(tmp_path: Path, gateway: dict[str, Any], supervisor: dict[str, Any]) -> Path:
    path = tmp_path / "fleet.yaml"
    data = {"gateway": gateway, "supervisor": supervisor, "models": [{"alias": "m"}]}
    path.write_text(yaml.safe_dump(data))
    return path


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text("# the gateway's keys\nsk-file-key\n")
    return path


def every_argv(plan: Plan) -> str:
    return "\0".join(arg for proc in plan.processes for arg in proc.argv)


def gateway_of(plan: Plan) -> Any:
    return next(proc for proc in plan.processes if proc.role == "gateway")


def test_serve_keys_reach_the_gateway_in_its_environment_never_on_a_command_line() -> None:
    plan = build_plan(ServeSettings(api_key=",".join(KEYS)))
    assert not any(key in every_argv(plan) for key in KEYS)
    assert "--api-key" not in every_argv(plan).split("\0")
    assert gateway_of(plan).env[GATEWAY_KEY_ENV] == ",".join(KEYS)
    worker = plan.processes[0]
    assert worker.role == "worker" and GATEWAY_KEY_ENV not in worker.env
    printed = json.dumps(plan.to_json())
    assert not any(key in printed for key in KEYS)
    assert plan.to_json()["processes"][1]["env"][GATEWAY_KEY_ENV] == "***"


def test_fleet_serve_keys_reach_the_gateway_in_its_environment(tmp_path: Path) -> None:
    config = load_fleet_config(fleet_file(tmp_path, {"api_key": "sk-in-the-file"}, {}))
    plan = fleet_plan(config, ServeSettings(api_key=list(KEYS)), cores=4, python="py")
    gateway = gateway_of(plan)
    assert gateway.env[GATEWAY_KEY_ENV] == ",".join(KEYS)
    assert not any(key in every_argv(plan) for key in (*KEYS, "sk-in-the-file"))
    # Without serve keys, the gateway reads the file's key itself: nothing in its environment.
    plan = fleet_plan(config, ServeSettings(host="0.0.0.0"), cores=4, python="py")
    assert GATEWAY_KEY_ENV not in gateway_of(plan).env and "sk-in-the-file" not in every_argv(plan)


def test_a_key_file_is_passed_by_path_and_checked_before_anything_starts(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    plan = build_plan(ServeSettings(api_key_file=str(path), host="0.0.0.0"))
    argv = list(gateway_of(plan).argv)
    assert argv[argv.index("--api-key-file") + 1] == str(path.resolve())
    assert "sk-file-key" not in every_argv(plan)
    with pytest.raises(ExposureError, match="cannot read the API key file"):
        build_plan(ServeSettings(api_key_file=str(tmp_path / "missing")))
    path.write_text("# no key yet\n")
    with pytest.raises(ExposureError, match="no API key in the file"):
        build_plan(ServeSettings(api_key_file=str(path)))


def test_serve_refuses_an_open_gateway_on_a_non_loopback_host(tmp_path: Path) -> None:
    with pytest.raises(ExposureError, match=OPEN_GATEWAY):
        build_plan(ServeSettings(host="0.0.0.0"))
    allowed = build_plan(ServeSettings(host="0.0.0.0", allow_insecure_bind=True))
    assert "--allow-insecure-bind" in gateway_of(allowed).argv
    path = fleet_file(tmp_path, {"host": "0.0.0.0"}, {})
    with pytest.raises(ExposureError, match=OPEN_GATEWAY):
        build_plan(ServeSettings(config=str(path)))
    assert build_plan(ServeSettings(config=str(path), api_key="k"))
    assert build_plan(ServeSettings(config=str(path), host="127.0.0.1"))
    for gateway in ({"api_key_file": str(key_file(tmp_path))}, {"allow_insecure_bind": True}):
        path = fleet_file(tmp_path, {"host": "0.0.0.0", **gateway}, {})
        assert build_plan(ServeSettings(config=str(path)))


def test_serve_refuses_workers_on_a_non_loopback_host_without_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ExposureError, match=OPEN_WORKERS):
        build_plan(ServeSettings(worker_host="0.0.0.0"))
    assert build_plan(ServeSettings(worker_host="0.0.0.0", allow_insecure_bind=True))
    path = fleet_file(tmp_path, {}, {"worker_host": "0.0.0.0"})
    with pytest.raises(ExposureError, match=OPEN_WORKERS):
        build_plan(ServeSettings(config=str(path)))
    path = fleet_file(tmp_path, {}, {"worker_host": "0.0.0.0", "allow_insecure_bind": True})
    plan = build_plan(ServeSettings(config=str(path)))
    assert "--allow-insecure-bind" not in gateway_of(plan).argv  # for the workers only


def test_by_default_serve_keeps_every_process_on_loopback() -> None:
    plan = build_plan(ServeSettings())
    for proc in plan.processes:
        argv = list(proc.argv)
        assert argv[argv.index("--host") + 1] == "127.0.0.1", proc.name


def test_the_docker_image_default_command_is_not_an_open_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    cmd = json.loads(re.findall(r"^CMD (\[.*\])$", text, re.M)[-1])
    assert cmd[0] == "serve"
    with pytest.raises(ExposureError, match="without an API key"):
        build_plan(CliApp.run(ServeSettings, cli_args=cmd[1:]))
    monkeypatch.setenv("LLAMAGRID_SERVE_API_KEY", "sk-docker-key")
    plan = build_plan(CliApp.run(ServeSettings, cli_args=cmd[1:]))
    assert gateway_of(plan).env[GATEWAY_KEY_ENV] == "sk-docker-key"


def test_serve_exits_with_a_clear_message_for_an_empty_key_or_an_open_bind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--api-key", "", "--print-plan"])
    assert str(info.value.code).startswith("llamagrid serve: invalid settings:\n  --api-key:")
    assert "an API key is empty" in str(info.value.code)
    monkeypatch.setenv("LLAMAGRID_SERVE_API_KEY", "not a key!")
    with pytest.raises(SystemExit) as info:
        main(["--print-plan"])
    assert "an API key must be" in str(info.value.code)
    assert "not a key!" not in str(info.value.code)
    monkeypatch.delenv("LLAMAGRID_SERVE_API_KEY")
    with pytest.raises(SystemExit) as info:
        main(["--host", "0.0.0.0", "--print-plan"])
    assert str(info.value.code).startswith("llamagrid serve: refusing to serve the gateway on")


def test_children_get_the_supervisor_pid_but_not_its_own_settings_nor_a_worker_the_key() -> None:
    parent = {
        "PATH": "/usr/bin",
        "LLAMAGRID_SERVE_API_KEY": "sk-serve",
        "LLAMAGRID_SERVE_PORT": "9000",
        GATEWAY_KEY_ENV: "sk-inherited",
        "LLAMAGRID_WORKER_N_CTX": "2048",
    }
    worker = child_environment("worker", {"CUDA_VISIBLE_DEVICES": ""}, parent, 4242)
    assert worker == {
        "PATH": "/usr/bin",
        "LLAMAGRID_WORKER_N_CTX": "2048",
        "CUDA_VISIBLE_DEVICES": "",
        parent_death.PARENT_PID_ENV: "4242",
    }
    gateway = child_environment("gateway", {GATEWAY_KEY_ENV: "sk-planned"}, parent, 4242)
    assert gateway[GATEWAY_KEY_ENV] == "sk-planned"
    assert gateway[parent_death.PARENT_PID_ENV] == "4242"
    assert not [name for name in gateway if name.startswith("LLAMAGRID_SERVE_")]


def test_a_child_asks_for_sigterm_when_its_supervisor_dies_and_exits_if_it_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requested: list[signal.Signals] = []

    def fake_prctl(sig: signal.Signals) -> bool:
        requested.append(sig)
        return True

    monkeypatch.setattr(parent_death, "set_parent_death_signal", fake_prctl)
    monkeypatch.delenv(parent_death.PARENT_PID_ENV, raising=False)
    assert parent_death.exit_with_parent() is False and requested == []  # not spawned by serve
    monkeypatch.setenv(parent_death.PARENT_PID_ENV, str(os.getppid()))
    assert parent_death.exit_with_parent() is True and requested == [signal.SIGTERM]
    assert parent_death.PARENT_PID_ENV not in os.environ  # not passed on to grandchildren
    # The supervisor died before the request: this process was re-parented, and exits.
    monkeypatch.setenv(parent_death.PARENT_PID_ENV, str(os.getppid() + 100_000))
    with pytest.raises(SystemExit, match="exited before this process started"):
        parent_death.exit_with_parent()


def test_the_kubernetes_gateway_refuses_to_start_without_its_key_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llamagrid.gateway.keys import gateway_bind_problem
    from llamagrid.gateway.settings import GatewaySettings

    path = ROOT / "deploy" / "k8s" / "base" / "gateway-deployment.yaml"
    (container,) = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "gateway"
    settings = CliApp.run(GatewaySettings, cli_args=container["args"][1:])
    assert settings.host == "0.0.0.0" and not settings.allow_insecure_bind
    assert gateway_bind_problem(settings.host, protected=False, allowed=False) is not None
    key_env = {e["name"]: e for e in container["env"]}[GATEWAY_KEY_ENV]
    assert key_env["valueFrom"]["secretKeyRef"]["key"] == "api-key"
    monkeypatch.setenv(GATEWAY_KEY_ENV, "sk-from-the-secret")
    settings = CliApp.run(GatewaySettings, cli_args=container["args"][1:])
    assert [key.get_secret_value() for key in settings.api_key] == ["sk-from-the-secret"]
