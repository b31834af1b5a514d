"""The README's fleet config example is a valid fleet file (so the documentation stays true)."""

from __future__ import annotations

import re
from pathlib import Path

from llamagrid.fleet.config import load_fleet_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_fleet_example_loads(tmp_path: Path) -> None:
    section = README.read_text().split("### Fleet config", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    path = tmp_path / "fleet.yaml"
    path.write_text(example.group(1))
    fleet = load_fleet_config(path)
    assert [m.alias for m in fleet.models] == ["llama3", "smollm2"]
    assert fleet.gateway_settings()["model_policies"] == {"smollm2": "round_robin"}
