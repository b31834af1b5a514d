"""The llama-cpp-python server config tables (llamagrid.fleet.llama_cpp_config) against the
installed llama-cpp-python's own settings classes (importing llama_cpp.server loads llama.cpp)."""

from __future__ import annotations

from llamagrid.fleet.llama_cpp_config import MODEL_KEYS, SERVER_KEYS


def test_key_tables_match_the_installed_llama_cpp_python() -> None:
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    assert set(MODEL_KEYS) == set(ModelSettings.model_fields)
    assert set(SERVER_KEYS) == set(ServerSettings.model_fields)
    for table, cls in ((MODEL_KEYS, ModelSettings), (SERVER_KEYS, ServerSettings)):
        for key, rule in table.items():
            if rule.kind in ("warn", "refuse"):
                assert rule.default == cls.model_fields[key].default, key
