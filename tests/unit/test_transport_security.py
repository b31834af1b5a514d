"""Worker TLS, mTLS and the per-call token, without a network: settings, files, the token rule,
the fleet config's supervisor.worker_tls and what `llamagrid serve` hands its children.

The live behaviour (handshakes, UNAUTHENTICATED, the gateway and serve in front of a TLS worker)
is in tests/integration/test_worker_tls.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import CliApp

from llamagrid.fleet.config import FleetConfigError, load_fleet_config
from llamagrid.gateway.settings import GatewaySettings
from llamagrid.gateway.worker_tls import worker_security
from llamagrid.security import (
    MAX_TOKEN_CHARS,
    TOKEN_ENV,
    ChannelSecurity,
    SecurityError,
    check_ca,
    check_key_pair,
    load_token,
    read_token_file,
)
from llamagrid.supervisor.access import ExposureError
from llamagrid.supervisor.plan import Plan, fleet_plan, single_model_plan
from llamagrid.supervisor.settings import ServeSettings
from llamagrid.worker.rpc.security import TokenCheck, exposure_warning, server_security
from llamagrid.worker.settings import WorkerSettings
from tests.certs import Certs, make_certs

TOKEN = "tok-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_llamagrid_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LLAMAGRID_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def settings_problem(cls: type[Any], **values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        cls(**values)
    return str(caught.value)


# Worker settings.


def test_worker_tls_flags_go_together() -> None:
    assert "--tls-cert and --tls-key go together" in settings_problem(
        WorkerSettings, tls_cert="c.pem"
    )
    assert "--tls-cert and --tls-key go together" in settings_problem(
        WorkerSettings, tls_key="k.pem"
    )
    assert "needs --tls-cert" in settings_problem(WorkerSettings, tls_client_ca="ca.pem")
    assert "must differ" in settings_problem(WorkerSettings, port=6000, health_port=6000)
    ok = WorkerSettings(tls_cert="c", tls_key="k", tls_client_ca="ca", health_port=6001)
    assert (ok.tls_client_ca, ok.max_concurrent_streams) == ("ca", 256)


def test_the_worker_token_has_no_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A flag's value shows in `ps`: only the environment and a file carry the token."""
    with pytest.raises(SystemExit):
        CliApp.run(WorkerSettings, cli_args=["--token", TOKEN])
    assert "unrecognized arguments: --token" in capsys.readouterr().err
    settings = CliApp.run(WorkerSettings, cli_args=["--token-file", "/run/token"])
    assert settings.token_file == "/run/token"


def test_gateway_worker_tls_flags_go_together() -> None:
    assert "go together" in settings_problem(GatewaySettings, worker_client_cert="c.pem")
    assert "needs TLS" in settings_problem(GatewaySettings, worker_tls_server_name="w.local")
    assert GatewaySettings(worker_ca="ca.pem").dials_tls
    assert GatewaySettings(worker_tls=True).dials_tls
    assert not GatewaySettings().dials_tls
    with pytest.raises(SystemExit):
        CliApp.run(GatewaySettings, cli_args=["--worker-token", TOKEN])


# The token.


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("has space", "letters, digits"),
        ("tok\x1b[31m", "letters, digits"),
        ("tök", "letters, digits"),
        ("a" * (MAX_TOKEN_CHARS + 1), "longer than"),
    ],
)
def test_a_bad_token_is_refused_without_being_repeated(
    tmp_path: Path, token: str, problem: str
) -> None:
    with pytest.raises(SecurityError, match=problem) as from_env:
        load_token("", {TOKEN_ENV: token})
    path = tmp_path / "token"
    path.write_text(token + "\n")
    with pytest.raises(SecurityError, match=problem) as from_file:
        load_token(str(path), {})
    for error in (from_env.value, from_file.value):
        assert token.strip() == "" or token.strip() not in str(error)


def test_the_token_comes_from_the_environment_or_a_stripped_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"\n  {TOKEN}\n")
    assert read_token_file(path) == TOKEN
    assert load_token(str(path), {}) == TOKEN
    assert load_token("", {TOKEN_ENV: TOKEN}) == TOKEN
    assert load_token("", {}) is None
    with pytest.raises(SecurityError, match="both"):
        load_token(str(path), {TOKEN_ENV: TOKEN})
    with pytest.raises(SecurityError, match="cannot read"):
        load_token(str(tmp_path / "missing"), {})


def metadata(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return pairs


@pytest.mark.parametrize(
    ("sent", "accepted"),
    [
        (metadata(("authorization", f"Bearer {TOKEN}")), True),
        (metadata(("authorization", f"bearer {TOKEN}")), True),  # the scheme is case-insensitive
        (metadata(), False),
        (metadata(("x-other", "1")), False),
        (metadata(("authorization", TOKEN)), False),
        (metadata(("authorization", f"Basic {TOKEN}")), False),
        (metadata(("authorization", f"Bearer {TOKEN}x")), False),
        (metadata(("authorization", f"Bearer {TOKEN[:-1]}")), False),
        (metadata(("authorization", f"Bearer  {TOKEN}")), False),
        (metadata(("authorization", "Bearer " + "A" * 8000)), False),
        (metadata(("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer x")), False),
        (
            metadata(("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
            False,
        ),
    ],
)
def test_only_the_exact_bearer_token_authenticates(
    sent: tuple[tuple[str, str], ...], accepted: bool
) -> None:
    problem = TokenCheck(TOKEN).problem(sent)
    assert (problem is None) == accepted
    assert problem is None or TOKEN not in problem


# TLS files.


def test_tls_files_are_checked_with_clear_errors(certs: Certs, tmp_path: Path) -> None:
    check_key_pair(certs.server_cert, certs.server_key)
    check_ca(certs.ca)
    with pytest.raises(SecurityError, match="cannot be used together"):
        check_key_pair(certs.server_cert, certs.client_key)
    with pytest.raises(SecurityError, match="cannot read"):
        check_key_pair(tmp_path / "missing.pem", certs.server_key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(SecurityError, match="no PEM data"):
        check_ca(junk)
    with pytest.raises(SecurityError, match="no PEM data"):
        check_key_pair(certs.server_cert, junk)


def test_worker_server_security_from_settings(certs: Certs) -> None:
    plain = server_security(WorkerSettings(), {})
    assert (plain.credentials, plain.token, plain.describe()) == (None, None, "plaintext")
    mtls = WorkerSettings(
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        tls_client_ca=str(certs.ca),
    )
    secured = server_security(mtls, {TOKEN_ENV: TOKEN})
    assert isinstance(secured.credentials, grpc.ServerCredentials)
    assert secured.describe() == "mTLS, token required" and TOKEN not in secured.describe()
    mismatched = mtls.model_copy(update={"tls_key": str(certs.client_key)})
    with pytest.raises(SecurityError, match="cannot be used together"):
        server_security(mismatched, {})


def test_an_unauthenticated_worker_off_loopback_is_warned_about(certs: Certs) -> None:
    plain = server_security(WorkerSettings(), {})
    assert exposure_warning("127.0.0.1", plain) is None
    assert exposure_warning("localhost", plain) is None
    assert exposure_warning("[::1]", plain) is None
    assert "anyone who can reach" in (exposure_warning("0.0.0.0", plain) or "")
    assert (
        exposure_warning("0.0.0.0", server_security(WorkerSettings(), {TOKEN_ENV: TOKEN})) is None
    )


def test_channel_security_checks_and_hides_its_secrets(certs: Certs) -> None:
    with pytest.raises(SecurityError, match="go together"):
        ChannelSecurity.create(client_cert=certs.client_cert)
    with pytest.raises(SecurityError, match="need TLS"):
        ChannelSecurity.create(tls=False, root_ca=certs.ca)
    with pytest.raises(SecurityError, match="need TLS"):
        ChannelSecurity.create(server_name="worker.local")
    with pytest.raises(SecurityError, match="is empty"):
        ChannelSecurity.create(token="")
    secured = ChannelSecurity.create(
        root_ca=certs.ca,
        client_cert=str(certs.client_cert),
        client_key=certs.client_key.read_bytes(),
        server_name="worker.local",
        token=TOKEN,
    )
    assert secured.tls and secured.root_ca == certs.ca.read_bytes()
    assert secured.metadata() == (("authorization", f"Bearer {TOKEN}"),)
    assert ("grpc.ssl_target_name_override", "worker.local") in secured.options([])
    assert TOKEN not in repr(secured) and b"PRIVATE" not in repr(secured).encode()
    assert ChannelSecurity.create().credentials() is None
    assert ChannelSecurity.create(tls=True).credentials() is not None  # the system's roots


def test_the_gateway_reads_its_worker_tls_once(certs: Certs, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    settings = GatewaySettings(
        worker_ca=str(certs.ca),
        worker_client_cert=str(certs.client_cert),
        worker_client_key=str(certs.client_key),
        worker_tls_server_name="localhost",
        worker_token_file=str(token_file),
    )
    security = worker_security(settings, {})
    assert security.tls and security.token == TOKEN and security.server_name == "localhost"
    assert worker_security(GatewaySettings(), {TOKEN_ENV: TOKEN}).token == TOKEN
    wrong = settings.model_copy(update={"worker_client_key": str(certs.server_key)})
    with pytest.raises(SecurityError, match="cannot be used together"):
        worker_security(wrong, {})


# The fleet config and `llamagrid serve`.


def fleet(tmp_path: Path, supervisor: dict[str, Any], **sections: Any) -> Path:
    path = tmp_path / "fleet.yaml"
    data = {"supervisor": supervisor, "models": [{"alias": "m", "replicas": 2}], **sections}
    path.write_text(yaml.safe_dump(data))
    return path


def worker_tls(certs: Certs, mtls: bool = True) -> dict[str, str]:
    section = {"cert": str(certs.server_cert), "key": str(certs.server_key), "ca": str(certs.ca)}
    if mtls:
        section |= {
            "client_ca": str(certs.ca),
            "client_cert": str(certs.client_cert),
            "client_key": str(certs.client_key),
        }
    return section


def test_fleet_config_takes_worker_tls_in_the_supervisor_section_only(
    certs: Certs, tmp_path: Path
) -> None:
    config = load_fleet_config(fleet(tmp_path, {"worker_tls": worker_tls(certs)}))
    assert config.supervisor.worker_tls is not None
    assert config.supervisor.worker_tls.client_ca == str(certs.ca)
    bad = {
        "supervisor": {"worker_tls": {"cert": "c.pem", "key": "k.pem", "client_ca": "ca.pem"}},
        "gateway": {"worker_ca": "ca.pem", "worker_token_file": "t"},
        "models": [{"alias": "m", "tls_cert": "c.pem", "token_file": "t", "health_port": 9}],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(FleetConfigError) as caught:
        load_fleet_config(path)
    text = str(caught.value)
    assert "client_ca, client_cert and client_key go together" in text
    assert "gateway.worker_ca: set by `llamagrid serve` from supervisor.worker_tls" in text
    assert "gateway.worker_token_file: set by `llamagrid serve`" in text
    assert "models[0].tls_cert: set by `llamagrid serve` from supervisor.worker_tls" in text
    assert "models[0].token_file" in text and "models[0].health_port" in text


def every_argv(plan: Plan) -> str:
    return "\0".join(arg for proc in plan.processes for arg in proc.argv)


def test_serve_hands_tls_and_the_token_file_to_the_children_in_their_environment(
    certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    supervisor = {"worker_tls": worker_tls(certs), "worker_token_file": str(token_file)}
    plan = fleet_plan(
        load_fleet_config(fleet(tmp_path, supervisor)), ServeSettings(), cores=4, environ={}
    )
    argv = every_argv(plan)
    for path in (token_file, *vars(certs).values()):
        assert str(path) not in argv
    assert TOKEN not in argv and TOKEN not in json.dumps(plan.to_json())
    *workers, gateway = plan.processes
    assert len(workers) == 2
    for worker in workers:
        assert worker.env["LLAMAGRID_WORKER_TLS_CERT"] == str(certs.server_cert)
        assert worker.env["LLAMAGRID_WORKER_TLS_KEY"] == str(certs.server_key)
        assert worker.env["LLAMAGRID_WORKER_TLS_CLIENT_CA"] == str(certs.ca)
        assert worker.env["LLAMAGRID_WORKER_TOKEN_FILE"] == str(token_file)
        assert not [k for k in worker.env if k.startswith("LLAMAGRID_GATEWAY_")]
        assert worker.tls is not None and worker.tls.cert == str(certs.client_cert)
        assert worker.tls.ca == str(certs.ca)
    assert gateway.env["LLAMAGRID_GATEWAY_WORKER_TLS"] == "true"
    assert gateway.env["LLAMAGRID_GATEWAY_WORKER_CA"] == str(certs.ca)
    assert gateway.env["LLAMAGRID_GATEWAY_WORKER_CLIENT_CERT"] == str(certs.client_cert)
    assert gateway.env["LLAMAGRID_GATEWAY_WORKER_CLIENT_KEY"] == str(certs.client_key)
    assert gateway.env["LLAMAGRID_GATEWAY_WORKER_TOKEN_FILE"] == str(token_file)
    assert not [k for k in gateway.env if k.startswith("LLAMAGRID_WORKER_")]
    # What the children read from that environment is what was meant.
    for proc in plan.processes:
        for name, value in proc.env.items():
            monkeypatch.setenv(name, value)
    assert WorkerSettings().tls_client_ca == str(certs.ca)
    assert worker_security(GatewaySettings(), os.environ).token == TOKEN


def test_serve_checks_worker_tls_files_and_the_token_before_starting(
    certs: Certs, tmp_path: Path
) -> None:
    broken = worker_tls(certs) | {"key": str(certs.client_key), "ca": str(tmp_path / "nope")}
    config = load_fleet_config(fleet(tmp_path, {"worker_tls": broken}))
    with pytest.raises(ExposureError) as caught:
        fleet_plan(config, ServeSettings(), cores=4, environ={TOKEN_ENV: ""})
    problems = caught.value.problems
    assert any("cannot be used together" in p for p in problems), problems
    assert any("cannot read the ca file" in p for p in problems), problems
    assert any("worker token" in p and "is empty" in p for p in problems), problems
    with pytest.raises(ExposureError, match="worker token"):
        single_model_plan(ServeSettings(), environ={TOKEN_ENV: "not a token"})


def test_workers_may_leave_loopback_only_when_they_authenticate_callers(
    certs: Certs, tmp_path: Path
) -> None:
    open_workers = re.escape("refusing to let workers listen on 0.0.0.0 without authentication")
    tls_only = load_fleet_config(
        fleet(tmp_path, {"worker_host": "0.0.0.0", "worker_tls": worker_tls(certs, mtls=False)})
    )
    with pytest.raises(ExposureError, match=open_workers):
        fleet_plan(tls_only, ServeSettings(), cores=4, environ={})
    fleet_plan(tls_only, ServeSettings(), cores=4, environ={TOKEN_ENV: TOKEN})
    mtls = load_fleet_config(
        fleet(tmp_path, {"worker_host": "0.0.0.0", "worker_tls": worker_tls(certs)})
    )
    fleet_plan(mtls, ServeSettings(), cores=4, environ={})
    with pytest.raises(ExposureError, match=open_workers):
        single_model_plan(ServeSettings(worker_host="0.0.0.0"), environ={})
    plan = single_model_plan(ServeSettings(worker_host="0.0.0.0"), environ={TOKEN_ENV: TOKEN})
    assert TOKEN not in every_argv(plan)


def test_the_readme_worker_tls_example_is_a_valid_supervisor_section(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("#### TLS and mTLS", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    data = yaml.safe_load(example.group(1))
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({**data, "models": [{"alias": "m"}]}))
    tls = load_fleet_config(path).supervisor.worker_tls
    assert tls is not None and tls.client_ca and tls.server_name == "localhost"
