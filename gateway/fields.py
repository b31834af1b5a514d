"""Fields a request body does not declare: each is refused, unless it holds nothing or a value
listed as an accepted no-op.

The HTTP bodies keep the fields their schema does not declare (pydantic's ``extra="allow"``)
so that they can be answered here, by name, rather than dropped: a 400
``unsupported_parameter`` naming the field (with its path, such as ``messages[2].refusal``),
never a silent 200. A field that holds nothing (null, an empty list or object, or an object of
nulls) asks for nothing, and passes: SDKs echo such fields back (an assistant message's
``refusal: null``, ``annotations: []``). A no-op is a field a peer API defines that cannot
change what llamagrid generates (``metadata``, ``store``, ``service_tier: "auto"``): it is
accepted at the values its entry allows, and the README lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from llamagrid.gateway.errors import unsupported

#: Whether a value of a no-op field is accepted.
NoOp = Callable[[object], bool]
#: The most entries, and the longest key and value, of a ``metadata`` object (OpenAI's limits).
METADATA_ENTRIES = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512
#: The longest string a free-text no-op (a caller label, a cache key) may hold.
LABEL_CHARS = 512
#: The longest field name an error repeats (the name is the client's: it may be huge).
NAME_CHARS = 64


#: The JSON Schema of a value that holds nothing, as ``unset`` judges it: what the bodies'
#: OpenAPI schemas allow as the value of a property they do not declare.
UNSET_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "null"},
        {"type": "array", "maxItems": 0},
        {"type": "object", "additionalProperties": {"type": "null"}},
    ]
}


def unset(value: object) -> bool:
    """Null, an empty list or object, or an object whose fields are all null."""
    if value is None or value == [] or value == {}:
        return True
    return isinstance(value, dict) and all(item is None for item in value.values())


def one_of(*values: object) -> NoOp:
    """Accepted at these values only, compared with their types (True is not 1)."""
    return lambda value: any(type(value) is type(ok) and value == ok for ok in values)


def any_bool(value: object) -> bool:
    return isinstance(value, bool)


def label(value: object) -> bool:
    """A string of at most LABEL_CHARS characters."""
    return isinstance(value, str) and len(value) <= LABEL_CHARS


def metadata(value: object) -> bool:
    """OpenAI's ``metadata``: at most 16 string pairs, keys of at most 64 characters and values
    of at most 512."""
    return (
        isinstance(value, dict)
        and len(value) <= METADATA_ENTRIES
        and all(
            isinstance(key, str)
            and isinstance(item, str)
            and len(key) <= METADATA_KEY_CHARS
            and len(item) <= METADATA_VALUE_CHARS
            for key, item in value.items()
        )
    )


#: OpenAI's request fields that cannot change a chat or text completion's output, and the
#: values at which each is accepted (README: "Accepted no-ops").
OPENAI_NO_OPS: Mapping[str, NoOp] = {
    # Stored completions and their labels: llamagrid stores nothing outside Responses.
    "store": any_bool,
    "metadata": metadata,
    # Labels of the end user (``user`` itself is declared: it keys routing affinity).
    "safety_identifier": label,
    # Cache hints: the prefix cache and the host tier work without them.
    "prompt_cache_key": label,
    "prompt_cache_retention": one_of("in_memory", "24h"),
    # One tier of service.
    "service_tier": one_of("auto", "default"),
}


def refuse_undeclared(
    body: BaseModel, no_ops: Mapping[str, NoOp] | None = None, path: str = ""
) -> None:
    """Raise a 400 ``unsupported_parameter`` for the first field of ``body``, or of a model
    nested in it, that its schema does not declare and that holds something; ``no_ops`` (top
    level only) accepts some of them at some values."""
    for name, value in (body.model_extra or {}).items():
        if unset(value):
            continue
        accept = (no_ops or {}).get(name)
        param = path + (name if len(name) <= NAME_CHARS else name[:NAME_CHARS] + "...")
        if accept is None:
            raise unsupported(param)
        if not accept(value):
            raise unsupported(param, f"The parameter '{param}' is not supported at this value.")
    for name in type(body).model_fields:
        _nested(getattr(body, name), f"{path}{name}")


def _nested(value: object, path: str) -> None:
    if isinstance(value, BaseModel):
        refuse_undeclared(value, path=path + ".")
    elif isinstance(value, list | tuple):
        _each(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, BaseModel):
                refuse_undeclared(item, path=f"{path}.{key}.")


def _each(values: Iterable[object], path: str) -> None:
    for index, item in enumerate(values):
        if isinstance(item, BaseModel):
            refuse_undeclared(item, path=f"{path}[{index}].")
