"""The fleet config: schema, errors with locations, llama-cpp-python files, and the serve plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llamagrid.fleet.config import FleetConfig, FleetConfigError, load_fleet_config
from llamagrid.fleet.llama_cpp_config import CHAT_TEMPLATES
from llamagrid.supervisor.plan import fleet_plan, thread_shares
from llamagrid.supervisor.serve import build_plan
from llamagrid.supervisor.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
UUID = "GPU-8c1f0e0a-1b2c-4d5e-8f90-123456789abc"

GOOD: dict[str, Any] = {
    "gateway": {"host": "0.0.0.0", "port": 8090, "policy": "least_load", "api_key": "s3cret"},
    "supervisor": {"base_port": 51000, "metrics_base_port": 52000, "drain_grace_s": 20},
    "models": [
        {
            "alias": "big",
            "model": "/models/big.gguf",
            "n_gpu_layers": -1,
            "n_ctx": 16384,
            "replicas": [{"gpus": [0]}, {"gpus": [UUID]}],
        },
        {
            "alias": "small",
            "policy": "round_robin",
            "replicas": 3,
            "n_ctx": 2048,
            "parallel": 2,
            "flash_attn": "off",
        },
    ],
}


def write(tmp_path: Path, data: Any, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    text = (
        data
        if isinstance(data, str)
        else (json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    )
    path.write_text(text)
    return path


def problems(tmp_path: Path, data: Any, name: str = "fleet.yaml") -> list[str]:
    with pytest.raises(FleetConfigError) as info:
        load_fleet_config(write(tmp_path, data, name))
    assert str(info.value).count("\n") >= len(info.value.problems)  # one line per problem
    return info.value.problems


# --- good configs -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fleet.yaml", "fleet.json", "fleet.conf"])
def test_good_config_in_yaml_and_json(tmp_path: Path, name: str) -> None:
    config = load_fleet_config(write(tmp_path, GOOD, name))
    assert config.format == "llamagrid"
    assert [m.alias for m in config.models] == ["big", "small"]
    big, small = config.models
    assert [r.gpus for r in big.replicas] == [(0,), (UUID,)]
    assert [r.gpus for r in small.replicas] == [(), (), ()]
    assert big.worker_settings() == {
        "alias": "big",
        "model": "/models/big.gguf",
        "n_gpu_layers": -1,
        "n_ctx": 16384,
    }
    assert small.worker_settings() == {
        "alias": "small",
        "n_ctx": 2048,
        "parallel": 2,
        "flash_attn": "off",
    }
    assert config.gateway_settings() == {
        "host": "0.0.0.0",
        "port": 8090,
        "policy": "least_load",
        "api_key": ["s3cret"],
        "model_policies": {"small": "round_robin"},
    }
    assert config.supervisor.base_port == 51000 and config.supervisor.max_backoff_s == 30.0
    assert config.model("small") is small


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    config = load_fleet_config(write(tmp_path, "models:\n  - alias: smollm2\n"))
    (entry,) = config.models
    assert [r.gpus for r in entry.replicas] == [()]
    assert entry.worker_settings() == {"alias": "smollm2"}
    assert config.gateway_settings() == {}
    assert config.model(None) is entry
    assert config.supervisor.base_port == 50051


def test_sections_ignore_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAGRID_WORKER_N_CTX", "1234")
    monkeypatch.setenv("LLAMAGRID_GATEWAY_PORT", "9999")
    config = load_fleet_config(write(tmp_path, GOOD))
    assert config.models[0].settings.n_ctx == 16384
    assert config.models[1].settings.n_batch == 512  # a default, not from anywhere else
    assert (
        "n_ctx"
        not in load_fleet_config(write(tmp_path, {"models": [{"alias": "a"}]}))
        .models[0]
        .worker_settings()
    )
    assert config.gateway_settings()["port"] == 8090


def test_warnings_for_unpinned_gpu_replicas_and_shared_gpus(tmp_path: Path) -> None:
    data = {
        "models": [
            {"alias": "a", "n_gpu_layers": -1, "replicas": 2},
            {"alias": "b", "replicas": [{"gpus": [0]}]},
            {"alias": "c", "replicas": [{"gpus": [1]}, {"gpus": [0, 1]}]},
        ]
    }
    warnings = load_fleet_config(write(tmp_path, data)).warnings
    assert warnings[0].startswith("models[0].replicas: 2 replicas offload layers")
    assert "models: GPU 0 is shared by b-0, c-1" in warnings
    assert "models: GPU 1 is shared by c-0, c-1" in warnings
    assert len(warnings) == 3


def test_model_lookup_errors(tmp_path: Path) -> None:
    config = load_fleet_config(write(tmp_path, GOOD))
    with pytest.raises(FleetConfigError, match=r"several \(big, small\)"):
        config.model(None)
    with pytest.raises(FleetConfigError, match="no model 'nope'"):
        config.model("nope")


# --- bad configs: every problem, with its location ---------------------------------------


BAD_CASES = [
    (
        {"models": [{"alias": "a", "n_ctxx": 1}]},
        "models[0].n_ctxx: unknown setting (did you mean n_ctx?)",
    ),
    ({"models": [{"alias": "a"}], "gatway": {}}, "gatway: unknown section (did you mean gateway?)"),
    (
        {"gateway": {"prot": 1}, "models": [{"alias": "a"}]},
        "gateway.prot: unknown setting (did you mean port?)",
    ),
    (
        {"supervisor": {"base_prot": 1}, "models": [{"alias": "a"}]},
        "supervisor.base_prot: unknown setting (did you mean base_port?)",
    ),
    (
        {"models": [{"alias": "a", "parallel": "four"}]},
        "models[0].parallel: Input should be a valid integer",
    ),
    (
        {"models": [{"alias": "a", "parallel": 0}]},
        "models[0].parallel: Input should be greater than or equal to 1",
    ),
    (
        {"models": [{"alias": "a", "split_mode": 1}]},
        "models[0].split_mode: Input should be 'none', 'layer' or 'row'",
    ),
    (
        {"models": [{"alias": "a", "policy": "fastest"}]},
        "models[0].policy: Input should be 'round_robin'",
    ),
    (
        {"gateway": {"policy": "random"}, "models": [{"alias": "a"}]},
        "gateway.policy: Input should be 'round_robin'",
    ),
    (
        {"gateway": {"workers": ["nohost"]}, "models": [{"alias": "a"}]},
        "gateway.workers: Value error, worker address 'nohost' is not HOST:PORT",
    ),
    (
        {"models": [{"alias": "a"}, {"alias": "a"}]},
        "models[1].alias: 'a' is already the alias of models[0]",
    ),
    ({"models": [{"model": "x.gguf", "replicas": 2}]}, "models[0].alias: required"),
    (
        {"models": [{"alias": "two words"}]},
        "models[0].alias: Value error, an alias is a non-empty name",
    ),
    ({"models": [{"alias": "a", "replicas": 0}]}, "models[0].replicas: at least 1 replica"),
    ({"models": [{"alias": "a", "replicas": "two"}]}, "models[0].replicas: expected a count"),
    (
        {"models": [{"alias": "a", "replicas": [{"gpus": [0]}, 2]}]},
        "models[0].replicas[1]: a count (2) inside a replica list",
    ),
    (
        {"models": [{"alias": "a", "replicas": [{"gpus": []}]}]},
        "models[0].replicas[0].gpus: expected a non-empty list",
    ),
    (
        {"models": [{"alias": "a", "replicas": [{"gpu": [0]}]}]},
        "models[0].replicas[0]: expected {gpus: [GPU ids]}",
    ),
    (
        {"models": [{"alias": "a", "replicas": [{"gpus": [0], "gpuz": 1}]}]},
        "models[0].replicas[0].gpuz: unknown replica key (did you mean gpus?)",
    ),
    (
        {"models": [{"alias": "a", "replicas": [{"gpus": [-1]}]}]},
        "models[0].replicas[0].gpus[0]: -1 is not a GPU index",
    ),
    (
        {"models": [{"alias": "a", "replicas": [{"gpus": ["cuda:0"]}]}]},
        "models[0].replicas[0].gpus[0]: 'cuda:0' is not a GPU index",
    ),
    (
        {"models": [{"alias": "a", "replicas": [{"gpus": [True]}]}]},
        "models[0].replicas[0].gpus[0]: True is not a GPU index",
    ),
    (
        {"models": [{"alias": "a", "replicas": [{"gpus": [1, 1]}]}]},
        "models[0].replicas[0].gpus[1]: GPU 1 is listed twice",
    ),
    (
        {"models": [{"alias": "a", "replicas": [{"gpus": [0, UUID]}]}]},
        "models[0].replicas[0].gpus: mixes GPU indices and UUIDs",
    ),
    (
        {"models": [{"alias": "a", "main_gpu": 1, "replicas": [{"gpus": [3]}]}]},
        "models[0].main_gpu: 1, but a replica has only 1 GPU(s)",
    ),
    (
        {"models": [{"alias": "a", "tensor_split": [1, 1], "replicas": [{"gpus": [3]}]}]},
        "models[0].tensor_split: 2 fractions, but a replica has only 1 GPU(s)",
    ),
    ({"models": [{"alias": "a", "port": 5000}]}, "models[0].port: set by `llamagrid serve`"),
    (
        {"models": [{"alias": "a", "metrics_port": 9000}]},
        "models[0].metrics_port: set by `llamagrid serve`",
    ),
    ({"models": [{"alias": "a", "name": "x"}]}, "models[0].name: set by `llamagrid serve`"),
    ({"models": [{"alias": "a", "config": "x"}]}, "models[0].config: not a fleet setting"),
    (
        {"gateway": {"config": "f"}, "models": [{"alias": "a"}]},
        "gateway.config: not a fleet setting",
    ),
    (
        {"gateway": {"model_policies": {}}, "models": [{"alias": "a"}]},
        "gateway.model_policies: set `policy` on each model",
    ),
    (
        {"supervisor": {"base_port": 0}, "models": [{"alias": "a"}]},
        "supervisor.base_port: Input should be greater than or equal to 1",
    ),
    (
        {"supervisor": {"restart_backoff_s": 5, "max_backoff_s": 1}, "models": [{"alias": "a"}]},
        "supervisor: Value error, max_backoff_s must be at least restart_backoff_s",
    ),
    ({"models": []}, "models: expected a non-empty list of model entries"),
    ({"gateway": {}}, "models: expected a non-empty list of model entries (missing)"),
    ({"models": ["smollm2"]}, "models[0]: expected a mapping"),
    (["models"], "(top level): expected a mapping"),
    ("", "(top level): expected a mapping"),
]


@pytest.mark.parametrize(("data", "message"), BAD_CASES)
def test_bad_field_is_reported_with_its_location(tmp_path: Path, data: Any, message: str) -> None:
    found = problems(tmp_path, data)
    assert any(p.startswith(message) for p in found), found


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = {
        "gateway": {"policy": "fastest"},
        "supervisor": {"base_port": 70000},
        "models": [
            {"alias": "a", "n_ctxx": 1, "replicas": [{"gpus": ["x"]}]},
            {"alias": "a", "parallel": -1},
        ],
    }
    found = problems(tmp_path, data)
    assert [p.split(":")[0] for p in found] == [
        "gateway.policy",
        "supervisor.base_port",
        "models[0].replicas[0].gpus[0]",
        "models[0].n_ctxx",
        "models[1].parallel",
        "models[1].alias",
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("f.yaml", "models:\n  - alias: a\n  - alias: [b\n", "not valid YAML"),
        (
            "f.yaml",
            "models:\n  - alias: a\n    n_ctx: 1\n    n_ctx: 2\n",
            "found the key 'n_ctx' twice",
        ),
        ("f.json", '{"models": [{"alias": "a", "alias": "b"}]}', "found the key 'alias' twice"),
        ("f.json", '{"models": [}', "line 1 column 13: not valid JSON"),
    ],
)
def test_unparsable_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    assert message in problems(tmp_path, text, name)[0]


def test_missing_file() -> None:
    with pytest.raises(FleetConfigError, match="cannot read the file"):
        load_fleet_config("/nonexistent/fleet.yaml")


# --- llama-cpp-python's server config ----------------------------------------------------

LLAMA_CPP_YAML = """\
# python -m llama_cpp.server --config_file server.yaml
host: 0.0.0.0
port: 8000
api_key: local-key
interrupt_requests: false
models:
  - model: models/OpenHermes-2.5-Mistral-7B-GGUF/openhermes-2.5-mistral-7b.Q4_K_M.gguf
    model_alias: gpt-3.5-turbo
    chat_format: chatml
    n_gpu_layers: -1
    offload_kqv: true
    n_threads: 12
    n_batch: 512
    n_ctx: 4096
    split_mode: 2
    tensor_split: [3, 1]
    flash_attn: true
  - model: "*q8_0.gguf"
    hf_model_repo_id: Qwen/Qwen2-0.5B-Instruct-GGUF
    n_threads: -1
    embedding: true
    verbose: false
"""


def test_llama_cpp_python_config_is_converted(tmp_path: Path) -> None:
    config = load_fleet_config(write(tmp_path, LLAMA_CPP_YAML, "server.yaml"))
    assert config.format == "llama-cpp-python"
    hermes, qwen = config.models
    assert hermes.alias == "gpt-3.5-turbo" and qwen.alias == "*q8_0.gguf"
    assert hermes.worker_settings() == {
        "alias": "gpt-3.5-turbo",
        "model": "models/OpenHermes-2.5-Mistral-7B-GGUF/openhermes-2.5-mistral-7b.Q4_K_M.gguf",
        "chat_template": CHAT_TEMPLATES["chatml"],
        "n_gpu_layers": -1,
        "n_threads": 12,
        "n_batch": 512,
        "n_ctx": 4096,
        "parallel": 1,
        "split_mode": "row",
        "tensor_split": [3.0, 1.0],
        "flash_attn": "on",
    }
    assert qwen.worker_settings() == {
        "alias": "*q8_0.gguf",
        "hf_repo": "Qwen/Qwen2-0.5B-Instruct-GGUF",
        "hf_file": "*q8_0.gguf",
        "n_threads": 0,
        "n_ctx": 2048,
        "parallel": 1,
    }
    assert [len(m.replicas) for m in config.models] == [1, 1]
    assert config.gateway_settings() == {"host": "0.0.0.0", "port": 8000, "api_key": ["local-key"]}
    warned = {w.split(":")[0] for w in config.warnings}
    assert {"interrupt_requests", "models[1].embedding", "models[1].verbose"} <= warned
    assert "models[0].offload_kqv" not in warned  # at its default: nothing to say


def test_llama_cpp_python_json_defaults_to_its_own_host_and_port(tmp_path: Path) -> None:
    data = {"models": [{"model": "m.gguf"}]}
    config = load_fleet_config(write(tmp_path, data, "server.json"))
    assert config.format == "llama-cpp-python"
    assert config.gateway_settings() == {"host": "localhost", "port": 8000}
    assert config.models[0].worker_settings() == {
        "alias": "m.gguf",
        "model": "m.gguf",
        "n_ctx": 2048,
        "parallel": 1,
    }


def test_llama_cpp_python_llava_entry_becomes_a_worker_with_a_projector(tmp_path: Path) -> None:
    entry = {"model": "m.gguf", "chat_format": "llava-1-5", "clip_model_path": "mmproj.gguf"}
    config = load_fleet_config(write(tmp_path, {"models": [entry]}, "server.json"))
    settings = config.models[0].worker_settings()
    assert settings["mmproj"] == "mmproj.gguf"
    assert settings["chat_template"] == CHAT_TEMPLATES["llava-1-5"]


def test_the_llava_template_renders_like_llama_cpp_pythons_handler() -> None:
    from llamagrid.worker.engine.chat_template import ChatTemplate

    template = ChatTemplate(CHAT_TEMPLATES["llava-1-5"], "<s>", "</s>")
    default = (
        "A chat between a curious human and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the human's questions."
    )
    # An image comes first in its turn, before the turn's text, wherever the client put it.
    assert template.render([{"role": "user", "content": "What is<__media__> this?"}]) == (
        f"{default}USER: <__media__>What is this?ASSISTANT: "
    )
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert template.render(chat) == "Be brief.USER: HiUSER: ASSISTANT: HelloASSISTANT: "


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"chat_format": "functionary-v2"},
            "models[0].chat_format: 'functionary-v2' has no llamagrid equivalent",
        ),
        ({"lora_path": "a.bin"}, "models[0].lora_path: 'a.bin' cannot be honoured: LoRA adapters"),
        ({"rope_freq_base": 1e6}, "models[0].rope_freq_base: 1000000.0 cannot be honoured: RoPE"),
        ({"type_k": 8}, "models[0].type_k: 8 cannot be honoured: KV cache quantization"),
        ({"offload_kqv": False}, "models[0].offload_kqv: False cannot be honoured"),
        (
            {"chat_format": "llava-1-6", "clip_model_path": "c.gguf"},
            "models[0].chat_format: 'llava-1-6' has no llamagrid equivalent",
        ),
        ({"chat_format": "llava-1-5"}, "models[0].chat_format: 'llava-1-5' needs clip_model_path"),
        ({"clip_model_path": 3}, "models[0].clip_model_path: expected the projector's path"),
        ({"split_mode": 7}, "models[0].split_mode: 7 is not a llama.cpp split mode"),
        ({"flash_attn": "yes"}, "models[0].flash_attn: expected true or false"),
        ({"n_ctxx": 1}, "models[0].n_ctxx: unknown llama-cpp-python key (did you mean n_ctx?)"),
        ({"n_batch": "big"}, "models[0].n_batch: Input should be a valid integer"),
        ({"model": None}, "models[0].model: required"),
    ],
)
def test_llama_cpp_python_keys_that_cannot_be_honoured(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    data = {"host": "0.0.0.0", "models": [{"model": "m.gguf", "model_alias": "m", **entry}]}
    found = problems(tmp_path, data)
    assert any(p.startswith(message) for p in found), found
    if "unknown" not in message and "valid integer" not in message:
        assert found[0].startswith("(read as a llama-cpp-python server config")


def test_llama_cpp_python_server_keys(tmp_path: Path) -> None:
    data = {"ssl_keyfile": "k.pem", "prot": 1, "models": [{"model": "m.gguf"}]}
    found = problems(tmp_path, data)
    assert any(p.startswith("ssl_keyfile: 'k.pem' cannot be honoured") for p in found)
    assert any(
        p.startswith("prot: unknown llama-cpp-python key (did you mean port?)") for p in found
    )


def test_mixing_both_formats_is_an_error(tmp_path: Path) -> None:
    data = {"models": [{"model": "m.gguf", "model_alias": "m", "replicas": 2}]}
    (found,) = problems(tmp_path, data)
    assert "mixes llama-cpp-python server keys (models[0].model_alias)" in found
    assert "llamagrid fleet keys (models[0].replicas)" in found


def test_mapped_chat_formats_render_like_llama_cpp_python() -> None:
    from llamagrid.worker.engine.chat_template import ChatTemplate

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    rendered = {
        name: ChatTemplate(source, "<s>", "</s>").render(messages)
        for name, source in CHAT_TEMPLATES.items()
    }
    assert rendered["chatml"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert rendered["llama-3"] == (
        "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert rendered["gemma"] == (
        "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert rendered["mistral-instruct"] == "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]"


# --- the serve plan ----------------------------------------------------------------------


def plan_config(tmp_path: Path) -> FleetConfig:
    return load_fleet_config(write(tmp_path, GOOD))


def test_plan_argv_env_ports_names_and_threads(tmp_path: Path) -> None:
    config = plan_config(tmp_path)
    plan = fleet_plan(config, ServeSettings(), cores=16, python="py")
    path = str(config.source.resolve())
    by_name = {p.name: p for p in plan.processes}
    assert list(by_name) == ["big-0", "big-1", "small-0", "small-1", "small-2", "gateway"]
    common = ["py", "-m", "llamagrid.worker", "--config", path, "--config-model"]
    # GPU replicas leave n_threads at 0: 2 threads each; the 3 CPU replicas share 16 - 4 cores.
    for i, (name, threads) in enumerate(
        [("big-0", 2), ("big-1", 2), ("small-0", 4), ("small-1", 4), ("small-2", 4)]
    ):
        alias = name.rsplit("-", 1)[0]
        assert list(by_name[name].argv) == [
            *common,
            alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(51000 + i),
            "--name",
            name,
            "--metrics-port",
            str(52000 + i),
            "--n-threads",
            str(threads),
            "--drain-grace-s",
            "20.0",
        ]
        assert by_name[name].address == f"127.0.0.1:{51000 + i}"
    base = {"PYTHONUNBUFFERED": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert by_name["big-0"].env == {**base, "CUDA_VISIBLE_DEVICES": "0"}
    assert by_name["big-1"].env == {**base, "CUDA_VISIBLE_DEVICES": UUID}
    for name in ("small-0", "small-1", "small-2"):
        assert by_name[name].env == {**base, "CUDA_VISIBLE_DEVICES": ""}
    gateway = by_name["gateway"]
    assert list(gateway.argv) == [
        "py",
        "-m",
        "llamagrid.gateway",
        "--config",
        path,
        "--host",
        "0.0.0.0",
        "--port",
        "8090",
        *[a for i in range(5) for a in ("--worker", f"127.0.0.1:{51000 + i}")],
        "--drain-grace-s",
        "20.0",
    ]
    assert gateway.env == {"PYTHONUNBUFFERED": "1"}
    assert plan.gateway_url == "http://127.0.0.1:8090"
    assert plan.models == ("big", "small") and plan.cores == 16


def test_unpinned_gpu_replica_inherits_the_gpus_and_flags_win(tmp_path: Path) -> None:
    data = {"models": [{"alias": "g", "n_gpu_layers": 20, "drain_grace_s": 5}]}
    config = load_fleet_config(write(tmp_path, data))
    serve = ServeSettings(port=9000, log_level="debug", restart_backoff_s=0.25)
    plan = fleet_plan(config, serve, cores=8, python="py")
    worker, gateway = plan.processes
    assert "CUDA_VISIBLE_DEVICES" not in worker.env
    assert worker.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "--drain-grace-s" not in worker.argv and worker.drain_grace_s == 5
    assert worker.argv[-2:] == ("--log-level", "debug")
    assert gateway.argv[gateway.argv.index("--port") + 1] == "9000"
    assert plan.restart.initial_s == 0.25


def test_thread_split_counts_explicit_threads_and_warns_when_short(tmp_path: Path) -> None:
    data = {
        "models": [
            {"alias": "fixed", "n_threads": 3, "replicas": 2},
            {"alias": "auto", "replicas": 4},
        ]
    }
    config = load_fleet_config(write(tmp_path, data))
    shares, warnings = thread_shares(config.models, cores=16)
    assert shares == {"auto": 2} and warnings == []  # (16 - 2*3) // 4
    shares, warnings = thread_shares(config.models, cores=8)
    assert shares == {"auto": 1} and "only 2 of 8 cores are left" in warnings[0]


@pytest.mark.parametrize(
    ("gateway", "supervisor", "message"),
    [
        ({"port": 51001}, {"base_port": 51000}, "supervisor.base_port: replica ports 51000-51004"),
        ({"port": 0}, {}, "gateway.port: `llamagrid serve` needs a fixed port"),
        ({}, {"base_port": 65533}, "supervisor.base_port: 5 replicas from 65533 go past"),
        ({}, {"base_port": 51000, "metrics_base_port": 51003}, "supervisor.metrics_base_port: the"),
    ],
)
def test_plan_port_problems(
    tmp_path: Path, gateway: dict[str, Any], supervisor: dict[str, Any], message: str
) -> None:
    data = {**GOOD, "gateway": gateway, "supervisor": supervisor}
    with pytest.raises(FleetConfigError) as info:
        fleet_plan(load_fleet_config(write(tmp_path, data)), ServeSettings(), cores=4)
    assert any(p.startswith(message) for p in info.value.problems), info.value.problems


def test_single_model_flags_are_refused_with_config(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    settings = ServeSettings(config=str(path), n_ctx=4096, worker_port=6000)
    with pytest.raises(FleetConfigError, match="--n-ctx, --worker-port: single-model flags"):
        build_plan(settings)
    assert [p.name for p in build_plan(ServeSettings()).processes] == ["worker", "gateway"]


def test_print_plan_prints_the_plan_and_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    out = subprocess.run(
        [sys.executable, "-m", "llamagrid", "serve", "--config", str(path), "--print-plan"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    printed = json.loads(out.stdout)
    config = load_fleet_config(path)
    expected = fleet_plan(config, ServeSettings(), cores=printed["cores"]).to_json()
    assert printed == expected
    assert printed["processes"][0]["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_print_plan_fails_on_a_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": [{"alias": "a", "n_ctxx": 1}]})
    out = subprocess.run(
        [sys.executable, "-m", "llamagrid", "serve", "--config", str(path), "--print-plan"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "models[0].n_ctxx: unknown setting (did you mean n_ctx?)" in out.stderr


# --- the worker's --config ---------------------------------------------------------------


def test_worker_takes_defaults_from_its_entry_and_flags_and_env_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llamagrid.worker.main import parse

    path = str(write(tmp_path, GOOD))
    settings, _ = parse(["--config", path, "--config-model", "small"])
    assert (settings.alias, settings.n_ctx, settings.parallel) == ("small", 2048, 2)
    assert settings.flash_attn == "off" and settings.n_batch == 512
    monkeypatch.setenv("LLAMAGRID_WORKER_PARALLEL", "3")
    settings, _ = parse(["--config", path, "--config-model", "small", "--n-ctx", "1024"])
    assert (settings.n_ctx, settings.parallel, settings.alias) == (1024, 3, "small")
    monkeypatch.setenv("LLAMAGRID_WORKER_CONFIG_MODEL", "big")
    settings, _ = parse(["--config", path])
    assert (settings.alias, settings.model, settings.n_gpu_layers) == (
        "big",
        "/models/big.gguf",
        -1,
    )


@pytest.mark.parametrize(
    ("data", "args", "message"),
    [
        ({"models": [{"alias": "a", "n_ctxx": 1}]}, [], "models[0].n_ctxx: unknown setting"),
        (GOOD, [], "models: several (big, small); pick one (--config-model)"),
        (GOOD, ["--config-model", "nope"], "models: no model 'nope'"),
    ],
)
def test_worker_exits_on_a_bad_config(
    tmp_path: Path, data: Any, args: list[str], message: str
) -> None:
    path = write(tmp_path, data)
    out = subprocess.run(
        [sys.executable, "-m", "llamagrid.worker", "--config", str(path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert message in out.stderr
