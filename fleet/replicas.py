"""A model's replicas in the fleet config: a count (unpinned) or a list of GPU groups.

GPU ids are indices (as ``nvidia-smi`` numbers them: the supervisor sets
CUDA_DEVICE_ORDER=PCI_BUS_ID) or UUIDs (``GPU-...``, ``MIG-...``), one kind per replica.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llamagrid.fleet.problems import Loc, Problems
from llamagrid.worker.settings import WorkerSettings

_GPU_UUID = re.compile(r"^(GPU|MIG)-[0-9a-fA-F]{4}[0-9a-fA-F-]*$|^MIG-GPU-[0-9a-fA-F-]+/\d+/\d+$")


@dataclass(frozen=True)
class Replica:
    """One worker process of a model: the GPUs it is pinned to (empty: not pinned)."""

    gpus: tuple[int | str, ...] = ()


def parse_replicas(value: Any, loc: list[str | int], problems: Problems) -> tuple[Replica, ...]:
    """``replicas``: absent (1), a count, or a list of ``{gpus: [...]}``."""
    if value is None:
        return (Replica(),)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            problems.error(loc, f"at least 1 replica (got {value})")
        return tuple(Replica() for _ in range(max(value, 0)))
    if not isinstance(value, list) or not value:
        problems.error(loc, f"expected a count (2) or a list of {{gpus: [...]}} (got {value!r})")
        return ()
    out: list[Replica] = []
    for j, item in enumerate(value):
        where = [*loc, j]
        if isinstance(item, int) and not isinstance(item, bool):
            problems.error(
                where,
                f"a count ({item}) inside a replica list: give either `replicas: N` "
                "(unpinned) or a list of {gpus: [...]} entries, not both",
            )
        elif not isinstance(item, dict) or "gpus" not in item:
            problems.error(where, f"expected {{gpus: [GPU ids]}} (got {item!r})")
        else:
            for key in item.keys() - {"gpus"}:
                problems.unknown_key(where, str(key), ["gpus"], "replica key")
            out.append(Replica(_gpus(item["gpus"], [*where, "gpus"], problems)))
    return tuple(out)


def _gpus(value: Any, loc: list[str | int], problems: Problems) -> tuple[int | str, ...]:
    """A replica's GPU ids: indices (0, 1, ...) or UUIDs (GPU-..., MIG-...), not both."""
    if not isinstance(value, list) or not value:
        problems.error(loc, f"expected a non-empty list of GPU indices or UUIDs (got {value!r})")
        return ()
    ids: list[int | str] = []
    for k, gpu in enumerate(value):
        parsed = _gpu_id(gpu)
        if parsed is None:
            problems.error(
                [*loc, k],
                f"{gpu!r} is not a GPU index (0, 1, ...) or UUID (GPU-..., MIG-..., "
                "as `nvidia-smi -L` prints them)",
            )
        elif parsed in ids:
            problems.error([*loc, k], f"GPU {parsed} is listed twice")
        else:
            ids.append(parsed)
    if len({isinstance(g, int) for g in ids}) > 1:
        problems.error(loc, "mixes GPU indices and UUIDs: use one kind per replica")
    return tuple(ids)


def _gpu_id(value: Any) -> int | str | None:
    """An index (an int or a string of digits) or a UUID; None when it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if _GPU_UUID.match(text):
            return text
    return None


def check_placement(
    settings: WorkerSettings, replicas: tuple[Replica, ...], loc: Loc, problems: Problems
) -> None:
    """main_gpu and tensor_split index the replica's own GPUs; unpinned GPU replicas share all."""
    pinned = [r for r in replicas if r.gpus]
    if pinned:
        fewest = min(len(r.gpus) for r in pinned)
        if "main_gpu" in settings.model_fields_set and settings.main_gpu >= fewest:
            problems.error(
                [*loc, "main_gpu"],
                f"{settings.main_gpu}, but a replica has only {fewest} GPU(s): main_gpu counts "
                "within the replica's own GPUs (CUDA_VISIBLE_DEVICES renumbers them from 0)",
            )
        if len(settings.tensor_split) > fewest:
            problems.error(
                [*loc, "tensor_split"],
                f"{len(settings.tensor_split)} fractions, but a replica has only {fewest} GPU(s)",
            )
    elif settings.n_gpu_layers != 0 and len(replicas) > 1:
        problems.warn(
            [*loc, "replicas"],
            f"{len(replicas)} replicas offload layers (n_gpu_layers {settings.n_gpu_layers}) "
            "without gpus: each sees every GPU the supervisor sees; pin them with "
            "replicas: [{gpus: [0]}, {gpus: [1]}]",
        )


def check_gpu_sharing(
    models: Iterable[tuple[str, tuple[Replica, ...]]], problems: Problems
) -> None:
    """Warn when one GPU is pinned to several replicas (allowed: they share its memory)."""
    users: dict[str, list[str]] = {}
    for alias, replicas in models:
        for r, replica in enumerate(replicas):
            for gpu in replica.gpus:
                users.setdefault(str(gpu), []).append(f"{alias}-{r}")
    for gpu, names in users.items():
        if len(names) > 1:
            problems.warn(["models"], f"GPU {gpu} is shared by {', '.join(names)}")
