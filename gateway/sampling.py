"""The sampling options every HTTP route copies onto the contract's SamplingParams as given.

They are SamplingParams' own single numbers and flags, read from its descriptor, so a field the
contract adds reaches the worker from any body that declares it under the same name; the worker
judges the values. ``max_tokens``, ``seed`` and ``top_logprobs`` are left to each route, whose
bodies spell or bound them in their own ways.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from llamagrid.v1 import inference_pb2 as pb

_NUMBERS_AND_FLAGS = frozenset(
    {
        FieldDescriptor.TYPE_FLOAT,
        FieldDescriptor.TYPE_DOUBLE,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_BOOL,
    }
)
_ROUTES_OWN = frozenset({"max_tokens", "seed", "top_logprobs"})

#: The SamplingParams fields a body field of the same name sets as given.
PLAIN_FIELDS = tuple(
    f.name
    for f in pb.SamplingParams.DESCRIPTOR.fields
    if not f.is_repeated and f.type in _NUMBERS_AND_FLAGS and f.name not in _ROUTES_OWN
)


def copy_plain(body: object, sampling: pb.SamplingParams) -> None:
    """Set each plain field that the body declares and gives (not None)."""
    for name in PLAIN_FIELDS:
        value = getattr(body, name, None)
        if value is not None:
            setattr(sampling, name, value)
