"""Reading a config document: JSON or YAML by suffix (or content), duplicate keys refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

from llamagrid.fleet.problems import FleetConfigError


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Refuse duplicate keys (PyYAML silently keeps the last one)."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if duplicate:
                raise ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"found the key {key!r} twice in one object")
        out[key] = value
    return out


def read_document(path: Path) -> Any:
    """The parsed file: ``.json`` (or ``{`` first without a YAML suffix) as JSON, else YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetConfigError(str(path), [f"cannot read the file: {exc}"]) from exc
    suffix = path.suffix.lower()
    as_json = suffix == ".json" or (
        suffix not in (".yaml", ".yml") and text.lstrip().startswith("{")
    )
    try:
        if as_json:
            return json.loads(text, object_pairs_hook=_no_duplicates)
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise FleetConfigError(str(path), [f"{where}: not valid JSON: {exc.msg}"]) from exc
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise FleetConfigError(str(path), [f"not valid YAML: {detail}"]) from exc
    except ValueError as exc:
        raise FleetConfigError(str(path), [f"not valid JSON: {exc}"]) from exc
