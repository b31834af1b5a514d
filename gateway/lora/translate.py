"""The ``lora`` field and /lora-adapters bodies as the wire carries them."""

from __future__ import annotations

from collections.abc import Sequence

from llamagrid.gateway.errors import invalid_request
from llamagrid.gateway.lora.schemas import LoraAdapterOut, LoraScaleIn
from llamagrid.v1 import inference_pb2 as pb


def lora_to_proto(entries: Sequence[LoraScaleIn]) -> list[pb.LoraScale]:
    """A list of scales as the wire carries it."""
    return [pb.LoraScale(id=e.id, scale=e.scale) for e in entries]


def adapters_json(adapters: Sequence[pb.LoraAdapter]) -> list[LoraAdapterOut]:
    """The adapters in llama-server's shape."""
    return [LoraAdapterOut(id=a.id, path=a.path, scale=a.scale) for a in adapters]


def request_lora(entries: Sequence[LoraScaleIn] | None, proto: pb.GenerateRequest) -> None:
    """A request's own adapter scales (``lora``). An empty list has no wire form (empty means
    "the worker's scales"): it is refused, and adapters are turned off with scale 0."""
    if entries is None:
        return
    if not entries:
        raise invalid_request(
            "lora must list at least one adapter; to turn adapters off, give them scale 0.",
            "lora",
        )
    proto.lora.extend(lora_to_proto(entries))
