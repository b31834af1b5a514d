"""llama-server's and llama-cpp-python's command lines, read as `llamagrid serve` flags, flag by
flag (supervisor/llama_server_flags.py, supervisor/llama_cpp_python_flags.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from pydantic_settings import CliApp

import llamagrid.cli
from llamagrid.fleet.llama_cpp_config import CHAT_TEMPLATES
from llamagrid.gateway.settings import GatewaySettings
from llamagrid.supervisor import llama_cpp_python_flags, llama_server_flags
from llamagrid.supervisor.plan import single_model_plan
from llamagrid.supervisor.serve import build_plan, compat_argv, parse
from llamagrid.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


def serve_args(*argv: str) -> list[str]:
    out = llama_server_flags.translate(list(argv))
    assert out.problems == [], out.problems
    assert out.warnings == [], out.warnings
    return out.argv


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-m", "a.gguf"], ["--model", "a.gguf"]),
        (["--model", "a.gguf"], ["--model", "a.gguf"]),
        (["--model=a.gguf"], ["--model", "a.gguf"]),
        (["-c", "8192"], ["--n-ctx", "8192"]),
        (["--ctx-size", "0"], ["--n-ctx", "0"]),
        (["-np", "4"], ["--parallel", "4"]),
        (["--parallel", "2"], ["--parallel", "2"]),
        (["-np", "-1"], ["--parallel", "4"]),  # automatic: llamagrid's default
        (["-t", "3"], ["--n-threads", "3"]),
        (["--threads", "-1"], ["--n-threads", "0"]),
        (["-ngl", "99"], ["--n-gpu-layers", "99"]),
        (["--gpu-layers", "all"], ["--n-gpu-layers", "-1"]),
        (["--n-gpu-layers", "-5"], ["--n-gpu-layers", "-1"]),
        (["--host", "0.0.0.0"], ["--host", "0.0.0.0"]),
        (["--port", "8081"], ["--port", "8081"]),
        (["--api-key", "k1,k2"], ["--api-key", "k1,k2"]),
        (["--api-key-file", "keys.txt"], ["--api-key-file", "keys.txt"]),
        (["-a", "gpt-3.5-turbo"], ["--alias", "gpt-3.5-turbo"]),
        (["--alias", "x"], ["--alias", "x"]),
        (["--pooling", "mean"], ["--pooling", "mean"]),
        (["--pooling", "cls"], ["--pooling", "cls"]),
        (["--pooling", "last"], ["--pooling", "last"]),
        (["-n", "-1"], []),
        (["--n-predict", "-2"], []),
        (["--chat-template", "chatml"], ["--chat-template", CHAT_TEMPLATES["chatml"]]),
        (["--chat-template", "llama3"], ["--chat-template", CHAT_TEMPLATES["llama-3"]]),
        (["--chat-template", "gemma"], ["--chat-template", CHAT_TEMPLATES["gemma"]]),
        (["--chat-template", "{{ messages }}"], ["--chat-template", "{{ messages }}"]),
        (["-fa"], ["--flash-attn", "on"]),
        (["-fa", "off"], ["--flash-attn", "off"]),
        (["--flash-attn", "auto"], ["--flash-attn", "auto"]),
        (["-b", "1024"], ["--n-batch", "1024"]),
        (["--batch-size", "64"], ["--n-batch", "64"]),
        (["-ub", "256"], ["--n-ubatch", "256"]),
        (["--ubatch-size", "128"], ["--n-ubatch", "128"]),
        (["--cache-ram", "2048"], ["--host-cache-mib", "2048"]),
        (["--cache-ram", "0"], ["--host-cache-mib", "0"]),
        (["-hf", "org/repo"], ["--hf-repo", "org/repo"]),
        (["-hfr", "org/repo:Q4_K_M"], ["--hf-repo", "org/repo", "--hf-file", "*Q4_K_M*.gguf"]),
        (["--hf-repo", "org/repo"], ["--hf-repo", "org/repo"]),
        (["-hff", "m.gguf"], ["--hf-file", "m.gguf"]),
        (["--hf-file", "m.gguf"], ["--hf-file", "m.gguf"]),
        (["--lora", "a.gguf"], ["--lora", "a.gguf"]),
        (["--slot-save-path", "/srv/slots"], ["--slot-save-path", "/srv/slots"]),
        (["--no-slots"], ["--no-slots-endpoint"]),
        (["--slots"], []),
        (["--lora-scaled", "a.gguf", "0.5"], ["--lora-scaled", "a.gguf:0.5"]),
        # Accepted: llamagrid always does what they ask.
        (["--jinja"], []),
        (["-cb"], []),
        (["--cont-batching"], []),
        (["--metrics"], []),
        (["--embedding"], []),
        (["--embeddings"], []),
    ],
)
def test_each_llama_server_flag_maps_onto_the_serve_flag_with_its_meaning(
    argv: list[str], expected: list[str]
) -> None:
    assert serve_args(*argv) == expected


def test_chat_template_file_becomes_the_workers_template_path(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    assert serve_args("--chat-template-file", str(template)) == [
        "--chat-template",
        str(template.resolve()),
    ]


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["-nocb"], "-nocb"),
        (["--no-cont-batching"], "--no-cont-batching"),
        (["--no-jinja"], "--no-jinja"),
        (["--temp", "0.2"], "--temp"),
        (["--top-k", "5"], "--top-k"),
        (["-s", "42"], "-s"),
        (["--ignore-eos"], "--ignore-eos"),
        (["-ctk", "q8_0"], "-ctk"),
        (["--rope-freq-base", "1e6"], "--rope-freq-base"),
        (["-sm", "row"], "-sm"),
        (["-ts", "3,1"], "-ts"),
        (["--mmproj-url", "https://x/p.gguf"], "--mmproj-url"),
        (["--ssl-key-file", "k.pem"], "--ssl-key-file"),
        (["-hft", "secret"], "-hft"),
        (["--lora-init-without-apply"], "--lora-init-without-apply"),
        (["--pooling", "rank"], "--pooling"),
        (["--pooling", "none"], "--pooling"),
        (["-n", "128"], "-n"),
        (["--chat-template", "vicuna"], "--chat-template"),
        (["--chat-template-file", "/no/such/file.jinja"], "--chat-template-file"),
        (["--flash-attn=maybe"], "--flash-attn"),
        (["--cache-ram", "-1"], "--cache-ram"),
        (["-ngl", "auto"], "-ngl"),
        (["-np", "0"], "-np"),
        (["-c", "-5"], "-c"),
        (["-c", "lots"], "-c"),
        (["--host", "/run/llama.sock"], "--host"),
        (["-a", "a,b"], "-a"),
        (["--lora-scaled", "a.gguf", "nan"], "--lora-scaled"),
        (["--lora-scaled", "a.gguf"], "--lora-scaled"),
        (["-m"], "-m"),
        (["--lora-scaled=a.gguf"], "--lora-scaled"),
        (["--jinja=yes"], "--jinja"),
    ],
)
def test_a_flag_llamagrid_cannot_honour_is_refused_by_name(argv: list[str], names: str) -> None:
    out = llama_server_flags.translate(argv)
    assert len(out.problems) == 1
    assert out.problems[0].startswith(f"{names}:")


@pytest.mark.parametrize(
    "argv",
    [
        ["--mlock"],
        ["--no-mmap"],
        ["-tb", "4"],
        ["--threads-http", "4"],
        ["-to", "30"],
        ["-v"],
        ["--log-disable"],
        ["--numa", "distribute"],
        ["--no-webui"],
    ],
)
def test_a_tuning_or_logging_flag_is_ignored_with_a_warning_naming_it(argv: list[str]) -> None:
    out = llama_server_flags.translate(argv)
    assert out.problems == [] and out.argv == []
    assert out.warnings and out.warnings[0].startswith(f"{argv[0]} is ignored")


def test_every_problem_is_reported_at_once() -> None:
    out = llama_server_flags.translate(["--temp", "1", "-nocb", "-m", "a.gguf", "-ctk", "q4_0"])
    assert [p.split(":")[0] for p in out.problems] == ["--temp", "-nocb", "-ctk"]


def test_serve_flags_and_their_values_pass_through_untouched() -> None:
    # The value of a serve flag is never read as a llama-server flag.
    argv = ["--config", "fleet.yaml", "--log-level", "debug", "--alias", "-m"]
    assert serve_args(*argv) == ["--config", "fleet.yaml", "--log-level", "debug", "--alias", "-m"]
    assert serve_args("--worker-port", "5000", "-c", "1024") == [
        "--worker-port",
        "5000",
        "--n-ctx",
        "1024",
    ]


def test_a_llama_server_script_starts_one_worker_with_its_total_context_and_slots() -> None:
    argv = ["-m", "model.gguf", "-c", "8192", "-np", "4", "--port", "8080"]
    settings = parse(compat_argv(argv, "llama-server", {}).argv)
    plan = single_model_plan(settings)
    worker = list(plan.processes[0].argv)
    # llama-server's -c is the total context the -np slots share, as llamagrid's --n-ctx is.
    assert worker[worker.index("--n-ctx") + 1] == "8192"
    assert worker[worker.index("--parallel") + 1] == "4"
    assert worker[worker.index("--model") + 1] == "model.gguf"
    assert plan.gateway_url == "http://127.0.0.1:8080"


def test_the_llama_server_command_keeps_llama_servers_default_of_one_slot() -> None:
    assert parse(compat_argv(["-m", "a.gguf"], "llama-server", {}).argv).parallel == 1
    assert parse(compat_argv(["-m", "a.gguf"], "serve", {}).argv).parallel == 4
    assert parse(compat_argv(["-np", "3"], "llama-server", {}).argv).parallel == 3


def test_worker_options_reach_the_worker_only_when_given(tmp_path: Path) -> None:
    plain = single_model_plan(parse(compat_argv(["-m", "a.gguf"], "serve", {}).argv))
    assert "--flash-attn" not in plain.processes[0].argv
    assert "--no-slots-endpoint" not in plain.processes[1].argv
    slots = str(tmp_path / "slots")
    argv = ["-m", "a.gguf", "-fa", "-b", "64", "-ub", "32", "--cache-ram", "0"]
    argv += ["--pooling", "cls", "--lora", "x.gguf", "--lora-scaled", "y.gguf", "0.5"]
    argv += ["--slot-save-path", slots, "--no-slots", "--chat-template", "chatml"]
    plan = single_model_plan(parse(compat_argv(argv, "serve", {}).argv))
    # The worker and the gateway take the flags they are given, with these meanings.
    worker = CliApp.run(WorkerSettings, cli_args=list(plan.processes[0].argv[3:]))
    assert (worker.flash_attn, worker.n_batch, worker.n_ubatch) == ("on", 64, 32)
    assert (worker.host_cache_mib, worker.pooling, worker.slot_save_path) == (0, "cls", slots)
    assert (worker.lora, worker.lora_scaled) == (["x.gguf"], ["y.gguf:0.5"])
    assert worker.chat_template == CHAT_TEMPLATES["chatml"]
    gateway = CliApp.run(GatewaySettings, cli_args=list(plan.processes[1].argv[3:]))
    assert gateway.slots_endpoint is False


def test_llama_server_model_flags_clash_with_a_fleet_config(tmp_path: Path) -> None:
    from llamagrid.fleet.problems import FleetConfigError

    settings = parse(
        compat_argv(["--config", str(tmp_path / "f.yaml"), "-c", "1"], "serve", {}).argv
    )
    with pytest.raises(FleetConfigError, match="--n-ctx"):
        build_plan(settings)


# llama-cpp-python's server


def cpp_args(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    out = llama_cpp_python_flags.translate(argv, env or {})
    assert out.problems == [], out.problems
    return out.argv


def pairs(argv: list[str]) -> dict[str, str]:
    return dict(zip(argv[::2], argv[1::2], strict=True))


def test_llama_cpp_python_flags_keep_its_defaults_of_one_slot_and_port_8000() -> None:
    got = pairs(cpp_args(["--model", "m.gguf"]))
    assert got == {
        "--host": "localhost",
        "--port": "8000",
        "--parallel": "1",
        "--n-ctx": "2048",
        "--model": "m.gguf",
        "--alias": "m.gguf",  # llama-cpp-python's default alias: the model path
    }


@pytest.mark.parametrize(
    ("argv", "flag", "value"),
    [
        (["--model_alias", "gpt-4"], "--alias", "gpt-4"),
        (["--n_ctx", "4096"], "--n-ctx", "4096"),
        (["--n_gpu_layers", "-1"], "--n-gpu-layers", "-1"),
        (["--n_threads", "-1"], "--n-threads", "0"),
        (["--n_batch", "64"], "--n-batch", "64"),
        (["--flash_attn", "true"], "--flash-attn", "on"),
        (["--chat_format", "chatml"], "--chat-template", CHAT_TEMPLATES["chatml"]),
        (["--clip_model_path", "c.gguf"], "--mmproj", "c.gguf"),
        (
            ["--chat_format", "llava-1-5", "--clip_model_path", "c.gguf"],
            "--chat-template",
            CHAT_TEMPLATES["llava-1-5"],
        ),
        (["--host", "127.0.0.1"], "--host", "127.0.0.1"),
        (["--port=9000"], "--port", "9000"),
        (["--api_key", "sk-1"], "--api-key", "sk-1"),
    ],
)
def test_each_llama_cpp_python_flag_maps_onto_a_serve_flag(
    argv: list[str], flag: str, value: str
) -> None:
    assert pairs(cpp_args(["--model", "m.gguf", *argv]))[flag] == value


def test_llama_cpp_python_environment_variables_are_read_and_flags_win() -> None:
    env = {"MODEL": "env.gguf", "HOST": "127.0.0.1", "PORT": "9001", "API_KEY": "k", "N_CTX": "512"}
    got = pairs(cpp_args([], env))
    assert (got["--model"], got["--host"], got["--port"], got["--api-key"]) == (
        "env.gguf",
        "127.0.0.1",
        "9001",
        "k",
    )
    assert got["--n-ctx"] == "512"
    assert pairs(cpp_args(["--port", "9002"], env))["--port"] == "9002"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["--chat_format", "functionary"], "--chat_format"),
        (["--chat_format", "llava-1-5"], "--chat_format"),  # without --clip_model_path
        (["--chat_format", "moondream", "--clip_model_path", "c.gguf"], "--chat_format"),
        (["--lora_path", "l.gguf"], "--lora_path"),
        (["--rope_freq_base", "10000"], "--rope_freq_base"),
        (["--ssl_keyfile", "k.pem"], "--ssl_keyfile"),
        (["--not_a_setting", "1"], "--not_a_setting"),
        (["--main_gpu", "1"], "--main_gpu"),
        (["--n_ctx"], "--n_ctx"),
    ],
)
def test_a_llama_cpp_python_flag_with_no_equivalent_is_an_error_naming_it(
    argv: list[str], name: str
) -> None:
    out = llama_cpp_python_flags.translate(["--model", "m.gguf", *argv], {})
    assert out.problems and out.problems[0].startswith(name), out.problems


def test_llama_cpp_python_needs_a_model() -> None:
    out = llama_cpp_python_flags.translate([], {})
    assert out.problems == ["--model (or MODEL): required, the GGUF path"]


def test_a_speed_only_llama_cpp_python_setting_is_a_warning() -> None:
    out = llama_cpp_python_flags.translate(["--model", "m.gguf", "--numa", "true"], {})
    assert out.problems == []
    assert out.warnings and out.warnings[0].startswith("--numa")


def test_llama_cpp_python_config_file_runs_as_a_fleet_config(tmp_path: Path) -> None:
    config = tmp_path / "llama.json"
    config.write_text('{"port": 8123, "models": [{"model": "m.gguf", "model_alias": "a"}]}')
    argv = cpp_args(["--config_file", str(config), "--host", "127.0.0.1"])
    assert argv == ["--config", str(config), "--host", "127.0.0.1"]
    plan = build_plan(parse(argv))
    assert plan.format == "llama-cpp-python"
    assert plan.gateway_url == "http://127.0.0.1:8123"
    out = llama_cpp_python_flags.translate(["--config_file", str(config), "--n_ctx", "1"], {})
    assert out.problems == ["--n_ctx: with --config_file, set it in the file"]


def test_a_huge_llama_cpp_python_value_is_refused() -> None:
    out = llama_cpp_python_flags.translate(["--model", "m" * 100_000], {})
    assert out.problems and out.problems[0].startswith("--model: longer than")


def test_both_console_scripts_name_one_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["llamagrid-llama-server"] == "llamagrid.cli:llama_server"
    assert scripts["llamagrid-llama-cpp-python"] == "llamagrid.cli:llama_cpp_python"
    assert callable(llamagrid.cli.llama_server) and callable(llamagrid.cli.llama_cpp_python)
    assert set(llamagrid.cli.DIALECTS) == {"serve", "llama-server", "llama-cpp-python"}
