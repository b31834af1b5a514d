"""A JSON schema's size, nesting and repetition counts, checked before it is turned into a grammar.

llama-cpp-python's converter writes ``maxLength: n`` as n nested optional groups, repeats an
item ``minItems`` times inline, and does the same for ``{m,n}`` in a ``pattern``. So one number
in a schema sets how much the converter builds and how deep llama.cpp's parser recurses:
``{"type": "string", "maxLength": 1000000}`` used to overflow the worker's stack. Every such
number is bounded here, in Python, before the converter sees the schema.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llamagrid.worker.engine.errors import EngineError, invalid, unsupported
from llamagrid.worker.engine.limits import RequestLimits

#: The keywords whose value the converter repeats an item by.
COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")
#: Keywords whose value is data (an instance), not a schema: their keys are not keywords.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
#: Keywords whose value maps names to schemas (its keys are names, not keywords).
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions"})
#: Keywords that constrain instances and that the converter would drop without a word: a
#: schema using one is refused (UNSUPPORTED) rather than enforced in part.
UNSUPPORTED_KEYWORDS = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "not",
        "if",
        "then",
        "else",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
#: The string formats the converter enforces.
SUPPORTED_FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
)
#: A {m}, {m,} or {m,n} quantifier in a pattern.
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")

PARAM = "response_format"


def check_json_schema(
    text: str, limits: RequestLimits, param: str = PARAM, keywords: bool = True
) -> dict[str, Any]:
    """Raise an EngineError naming param if the schema is too big, too deep or repeats too much
    (or, with ``keywords``, uses a keyword or format the converter would not enforce); return
    the parsed schema."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > limits.max_schema_bytes:
        raise invalid(
            f"the JSON schema is {size} bytes; the limit is {limits.max_schema_bytes}", param
        )
    try:
        schema = json.loads(text)
    except ValueError:
        raise invalid("the JSON schema is not valid JSON", param) from None
    except RecursionError:  # json.loads recurses once per level
        raise _too_deep(limits, param) from None
    if not isinstance(schema, dict):
        raise invalid("the JSON schema must be a JSON object", param)
    _walk(schema, limits, param, keywords)
    return schema


def _walk(schema: dict[str, Any], limits: RequestLimits, param: str, keywords: bool) -> None:
    """Visit every object and array of the document, without recursion."""
    # What each node is: a schema (or a list of them), a map of names to schemas, or data.
    todo: list[tuple[Any, int, str]] = [(schema, 1, "schema")]
    while todo:
        node, depth, kind = todo.pop()
        if depth > limits.max_schema_depth:
            raise _too_deep(limits, param)
        if isinstance(node, dict):
            if kind == "schema":
                if keywords:
                    _check_keywords(node, param)
                _check_counts(node, limits.max_schema_count, param)
                _check_properties(node, limits.max_schema_properties, param)
            for key, value in node.items():
                if isinstance(value, dict | list):
                    todo.append((value, depth + 1, _kind_of(kind, key, value)))
        else:
            nested = (item for item in node if isinstance(item, dict | list))
            todo.extend((item, depth + 1, kind) for item in nested)


def _kind_of(parent: str, key: str, value: dict[str, Any] | list[Any]) -> str:
    """What the value under ``key`` of a node of kind ``parent`` is."""
    if parent == "data" or (parent == "schema" and key in _DATA_KEYWORDS):
        return "data"
    if parent == "schema" and key in _SCHEMA_MAPS and isinstance(value, dict):
        return "map"
    return "schema"


def _check_keywords(node: dict[str, Any], param: str) -> None:
    """Refuse the keywords the converter would ignore: they would not be enforced."""
    ignored = sorted(UNSUPPORTED_KEYWORDS.intersection(node))
    if ignored:
        raise unsupported(
            f"the JSON schema keyword '{ignored[0][:64]}' is not supported: the output could not "
            "be held to it",
            param,
        )
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt not in SUPPORTED_FORMATS:
        raise unsupported(
            f"the JSON schema format '{fmt[:64]}' is not supported; supported formats: "
            + ", ".join(sorted(SUPPORTED_FORMATS)),
            param,
        )


def _too_deep(limits: RequestLimits, param: str) -> EngineError:
    return invalid(f"the JSON schema nests deeper than {limits.max_schema_depth} levels", param)


def _check_counts(node: dict[str, Any], limit: int, param: str) -> None:
    values: dict[str, int] = {}
    for key in COUNT_KEYWORDS:
        value = node.get(key)
        if value is None or isinstance(value, dict | list):
            continue  # absent, or a property that happens to have this name
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(f"{key} in the JSON schema must be a whole number, 0 or more", param)
        if value > limit:
            raise invalid(f"{key} {value} in the JSON schema is over the limit of {limit}", param)
        values[key] = value
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if low in values and high in values and values[low] > values[high]:
            raise invalid(f"{low} is above {high} in the JSON schema", param)
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        _check_pattern(pattern, limit, param)


def _check_properties(node: dict[str, Any], limit: int, param: str) -> None:
    properties = node.get("properties")
    if isinstance(properties, dict) and len(properties) > limit:
        raise invalid(
            f"an object in the JSON schema has {len(properties)} properties; the limit is {limit}",
            param,
        )


def _check_pattern(pattern: str, limit: int, param: str) -> None:
    for match in _QUANTIFIER.finditer(pattern):
        for digits in match.groups():
            if digits and (len(digits) > 6 or int(digits) > limit):
                raise invalid(
                    f"a pattern in the JSON schema repeats {{{digits[:12]}}} times; "
                    f"the limit is {limit}",
                    param,
                )
