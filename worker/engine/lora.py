"""LoRA adapters: the scales a worker applies, and the one rule for a list of scales.

A worker loads its adapters at start (``--lora PATH``, ``--lora-scaled PATH:SCALE``); their ids
are their order on the command line. Each adapter has a global scale, which the operator can
change at run time (SetLoraAdapters, ``POST /lora-adapters``), and a request can bring its own
list (GenerateRequest.lora, the HTTP ``lora`` field). As in llama-server, a list sets the
scale of every adapter it names, and every adapter it leaves out gets scale 0.

The effective scales of a request are fixed when it is admitted. The scheduler batches only
sequences with equal scales in one decode, and reuses KV cells (resident or in the host tier)
only when they were computed under the same scales (engine/scheduler.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llamagrid.worker.engine.errors import invalid

#: The largest scale magnitude a list may give (llama-server sets no bound; far larger scales
#: only turn the output into noise).
MAX_LORA_SCALE = 10.0
#: The most entries one list may hold.
MAX_LORA_ENTRIES = 64

#: One scale per loaded adapter, in id order.
Scales = tuple[float, ...]


@dataclass(frozen=True)
class LoraScale:
    """The scale to give one adapter."""

    id: int
    scale: float


@dataclass(frozen=True)
class LoraAdapter:
    """A loaded adapter as reported: its id, its file name (never its path) and its scale."""

    id: int
    path: str
    scale: float


def check_lora(entries: Sequence[LoraScale], n_adapters: int, field: str = "lora") -> None:
    """Raise an EngineError naming ``field`` unless every entry names a loaded adapter once,
    with a finite scale within MAX_LORA_SCALE."""
    if len(entries) > MAX_LORA_ENTRIES:
        raise invalid(f"at most {MAX_LORA_ENTRIES} adapter scales may be given", field)
    if entries and n_adapters == 0:
        raise invalid("this worker has no LoRA adapters loaded", field)
    seen: set[int] = set()
    for entry in entries:
        if not 0 <= entry.id < n_adapters:
            raise invalid(
                f"adapter id {entry.id} is unknown: the ids are 0 to {n_adapters - 1}", field
            )
        if entry.id in seen:
            raise invalid(f"adapter id {entry.id} is given twice", field)
        seen.add(entry.id)
        if not math.isfinite(entry.scale) or abs(entry.scale) > MAX_LORA_SCALE:
            raise invalid(
                f"the scale of adapter {entry.id} must be between {-MAX_LORA_SCALE:g} and "
                f"{MAX_LORA_SCALE:g}",
                field,
            )


def scales_of(entries: Sequence[LoraScale], n_adapters: int) -> Scales:
    """The scales a checked list sets: those it names, 0 for the others."""
    scales = [0.0] * n_adapters
    for entry in entries:
        scales[entry.id] = float(entry.scale)
    return tuple(scales)


def parse_scaled(text: str) -> tuple[str, float]:
    """A ``PATH:SCALE`` setting as (path, scale); ValueError if it is not one."""
    path, sep, scale = text.rpartition(":")
    if not sep or not path:
        raise ValueError(f"{text!r} is not PATH:SCALE")
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"the scale of {path!r} is not a finite number")
    return path, value
