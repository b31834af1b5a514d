"""llama-server's LLAMA_ARG_* variables, and llama-cpp-python's command line on `llamagrid serve`
(supervisor/llama_server_env.py, supervisor/serve.py's compat_argv)."""

from __future__ import annotations

import pytest

from llamagrid.supervisor import llama_server_env
from llamagrid.supervisor.llama_server_flags import RULES
from llamagrid.supervisor.plan import single_model_plan
from llamagrid.supervisor.serve import compat_argv, parse


def pairs(argv: list[str]) -> dict[str, str]:
    """Serve flags with a value, as a dict (flags of no value map to "")."""
    out: dict[str, str] = {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            out[token] = "" if nxt.startswith("--") else nxt
    return out


def test_every_variable_stands_for_a_llama_server_flag_this_table_judges() -> None:
    assert set(llama_server_env.VARIABLES.values()) <= set(RULES)


def test_the_docker_compose_example_starts_the_same_server_as_its_flags() -> None:
    env = {
        "LLAMA_ARG_MODEL": "/models/my_model.gguf",
        "LLAMA_ARG_CTX_SIZE": "4096",
        "LLAMA_ARG_N_PARALLEL": "2",
        "LLAMA_ARG_ENDPOINT_METRICS": "1",
        "LLAMA_ARG_PORT": "8080",
    }
    from_env = compat_argv([], "llama-server", env)
    typed = ["-m", "/models/my_model.gguf", "-c", "4096", "-np", "2", "--metrics"]
    from_flags = compat_argv([*typed, "--port", "8080"], "llama-server", {})
    assert from_env.problems == from_flags.problems == []
    assert pairs(from_env.argv) == pairs(from_flags.argv)
    plan = single_model_plan(parse(from_env.argv))
    worker = list(plan.processes[0].argv)
    assert worker[worker.index("--n-ctx") + 1] == "4096"
    assert worker[worker.index("--parallel") + 1] == "2"
    assert plan.gateway_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("flag", ["-c", "--ctx-size", "--ctx-size=1024"])
def test_a_flag_on_the_command_line_wins_over_its_variable_in_any_spelling(flag: str) -> None:
    argv = [flag] if "=" in flag else [flag, "1024"]
    out = compat_argv(argv, "serve", {"LLAMA_ARG_CTX_SIZE": "4096"})
    assert pairs(out.argv)["--n-ctx"] == "1024"
    assert out.argv.count("--n-ctx") == 1


def test_llama_api_key_is_the_api_key() -> None:
    out = compat_argv(["-m", "a.gguf"], "serve", {"LLAMA_API_KEY": "sk-env"})
    assert pairs(out.argv)["--api-key"] == "sk-env"


@pytest.mark.parametrize(
    ("value", "present"), [("1", True), ("true", True), ("on", True), ("0", False), ("off", False)]
)
def test_a_boolean_variable_gives_its_flag_only_when_true(value: str, present: bool) -> None:
    out = compat_argv(["-m", "a.gguf"], "serve", {"LLAMA_ARG_NO_ENDPOINT_SLOTS": value})
    assert out.problems == []
    baseline = compat_argv(["-m", "a.gguf", "--no-slots"], "serve", {}).argv
    assert (sorted(out.argv) == sorted(baseline)) is present


def test_a_boolean_variable_that_is_neither_true_nor_false_is_refused_by_name() -> None:
    out = compat_argv([], "serve", {"LLAMA_ARG_ENDPOINT_METRICS": "maybe"})
    assert any(p.startswith("LLAMA_ARG_ENDPOINT_METRICS:") for p in out.problems)


def test_flash_attn_takes_on_off_auto_or_a_boolean() -> None:
    assert (
        pairs(compat_argv([], "serve", {"LLAMA_ARG_FLASH_ATTN": "auto"}).argv)["--flash-attn"]
        == pairs(compat_argv(["-fa", "auto"], "serve", {}).argv)["--flash-attn"]
    )
    on = compat_argv([], "serve", {"LLAMA_ARG_FLASH_ATTN": "true"}).argv
    assert (
        pairs(on)["--flash-attn"]
        == pairs(compat_argv(["-fa", "on"], "serve", {}).argv)["--flash-attn"]
    )


def test_a_variable_for_a_refused_flag_is_refused_like_the_flag() -> None:
    out = compat_argv([], "serve", {"LLAMA_ARG_NO_CONT_BATCHING": "1"})
    assert any(p.startswith("--no-cont-batching:") for p in out.problems)


def test_an_unknown_llama_arg_variable_is_a_warning_and_others_are_not_read() -> None:
    out = compat_argv([], "serve", {"LLAMA_ARG_SOMETHING_NEW": "1", "HOST": "0.0.0.0"})
    assert out.problems == []
    assert any("LLAMA_ARG_SOMETHING_NEW" in w for w in out.warnings)
    assert "--host" not in out.argv  # HOST is llama-cpp-python's, read only in its dialect


def test_serve_with_a_llama_cpp_python_flag_reads_its_command_line_and_defaults() -> None:
    out = compat_argv(["--model", "m.gguf", "--n_ctx", "4096"], "serve", {"PORT": "9005"})
    assert out.problems == []
    got = pairs(out.argv)
    assert (got["--n-ctx"], got["--parallel"], got["--port"]) == ("4096", "1", "9005")


def test_serve_with_only_model_set_starts_as_llama_cpp_pythons_server() -> None:
    out = compat_argv([], "serve", {"MODEL": "m.gguf", "N_CTX": "1024"})
    assert out.problems == []
    got = pairs(out.argv)
    assert (got["--model"], got["--n-ctx"], got["--port"]) == ("m.gguf", "1024", "8000")


def test_serve_with_its_own_flags_ignores_llama_cpp_pythons_variables() -> None:
    out = compat_argv(["--model", "a.gguf"], "serve", {"MODEL": "m.gguf", "PORT": "9005"})
    assert pairs(out.argv) == {"--model": "a.gguf"}


def test_a_llama_cpp_python_flag_llamagrid_cannot_honour_is_still_named_on_serve() -> None:
    out = compat_argv(["--model", "m.gguf", "--lora_path", "l.gguf"], "serve", {})
    assert any("--lora_path" in p for p in out.problems)


def test_a_projector_reaches_the_worker_from_the_flag_or_its_variable() -> None:
    for argv, env in (
        (["-m", "a.gguf", "-mm", "p.gguf"], {}),
        (["-m", "a.gguf"], {"LLAMA_ARG_MMPROJ": "p.gguf"}),
    ):
        out = compat_argv(argv, "serve", env)
        assert out.problems == []
        worker = list(single_model_plan(parse(out.argv)).processes[0].argv)
        assert worker[worker.index("--mmproj") + 1] == "p.gguf"
    plain = single_model_plan(parse(compat_argv(["-m", "a.gguf"], "serve", {}).argv))
    assert "--mmproj" not in plain.processes[0].argv
