"""Where llama.cpp put a model: devices, layer placement, and the GPU offload checks.

Pure logic over what llama_backend reads from llama.cpp (ggml's device list, the per-layer
device assignment llama.cpp logs while loading), so that it can be tested without a GPU.
A worker asked to offload layers must never fall back to the CPU in silence: it refuses to load
when the build cannot offload at all, and refuses to serve when no layer ended up on a GPU.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from llamagrid.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: ggml_backend_dev_type values, in enum order (llama.cpp's ggml-backend.h).
DEVICE_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")
#: The line llama.cpp logs (at debug level) for each layer while loading a model's tensors.
_LAYER_LINE = re.compile(r"load_tensors: layer\s+(\d+) assigned to device ([^,\s]+)")
_HOST_TYPES = ("cpu", "accel")
_FIX = (
    "Install a llama-cpp-python built for the GPU, e.g. "
    "CMAKE_ARGS=-DGGML_CUDA=on pip install --force-reinstall --no-cache-dir llama-cpp-python, "
    "or set n_gpu_layers to 0 (--n-gpu-layers 0) to run on the CPU."
)


class OffloadError(RuntimeError):
    """The worker was asked to offload layers to a GPU and llama.cpp cannot or did not."""


@dataclass(frozen=True)
class DeviceInfo:
    """One ggml device as llama.cpp reports it."""

    name: str
    description: str = ""
    #: One of DEVICE_TYPES, or "" when unknown.
    type: str = ""
    #: The ggml backend (registry) name: "CPU", "CUDA", "Metal", "Vulkan", "BLAS", ...
    backend: str = ""
    memory_free: int = 0
    memory_total: int = 0
    #: The PCI bus id, or "".
    device_id: str = ""
    #: Layers of the served model placed on this device.
    layers: int = 0


@dataclass(frozen=True)
class Placement:
    """Where the served model lives: the settings asked for, and what llama.cpp did."""

    backend: str
    visible_devices: tuple[str, ...]
    n_gpu_layers: int
    main_gpu: int
    split_mode: str
    tensor_split: tuple[float, ...]
    devices: tuple[DeviceInfo, ...]
    offloaded_layers: int
    total_layers: int


def visible_devices(env_value: str | None) -> tuple[str, ...]:
    """CUDA_VISIBLE_DEVICES split into GPU ids (indices or UUIDs); () when unset or empty."""
    return tuple(v.strip() for v in (env_value or "").split(",") if v.strip())


def layer_devices(log_lines: Iterable[str]) -> dict[int, str]:
    """The device llama.cpp assigned to each layer, from the lines it logged while loading."""
    out: dict[int, str] = {}
    for line in log_lines:
        if match := _LAYER_LINE.search(line):
            out[int(match.group(1))] = match.group(2)
    return out


def _cuda_note(cuda_visible: str | None) -> str:
    if cuda_visible is None:
        return ""
    return f" CUDA_VISIBLE_DEVICES is '{cuda_visible}': it must name a GPU of this machine."


def check_offload_possible(
    n_gpu_layers: int, supports_offload: bool, backends: Sequence[str], cuda_visible: str | None
) -> None:
    """Before loading: raise OffloadError if layers are asked for and no GPU can take them."""
    if n_gpu_layers == 0 or supports_offload:
        return
    gpu_backends = [b for b in backends if b.upper() not in ("CPU", "BLAS", "AMX")]
    if gpu_backends:
        why = (
            f"this llama.cpp build has the {', '.join(gpu_backends)} backend but it found no "
            "GPU device (llama_supports_gpu_offload() is false)"
        )
    else:
        why = (
            "this llama.cpp build has no GPU backend (llama_supports_gpu_offload() is false; "
            f"backends: {', '.join(backends) or 'none'})"
        )
    raise OffloadError(
        f"n_gpu_layers (--n-gpu-layers) is {n_gpu_layers}, but {why}, so the model would "
        f"silently run on the CPU.{_cuda_note(cuda_visible)} {_FIX}"
    )


def check_offloaded(placement: Placement, cuda_visible: str | None) -> None:
    """After loading: raise OffloadError if layers were asked for and none reached a GPU."""
    asked = placement.n_gpu_layers
    if asked == 0:
        return
    if placement.offloaded_layers == 0:
        names = ", ".join(d.name for d in placement.devices) or "none"
        raise OffloadError(
            f"n_gpu_layers (--n-gpu-layers) is {asked}, but llama.cpp placed none of the model's "
            f"{placement.total_layers} layers on a GPU (devices in use: {names}), so the model "
            f"would silently run on the CPU.{_cuda_note(cuda_visible)} {_FIX}"
        )
    expected = placement.total_layers if asked < 0 else min(asked, placement.total_layers)
    if placement.offloaded_layers < expected:
        log.warning(
            "n_gpu_layers is %d, but llama.cpp offloaded only %d of %d layers",
            asked,
            placement.offloaded_layers,
            placement.total_layers,
        )


def devices_in_use(
    all_devices: Sequence[DeviceInfo],
    layers: dict[int, str],
    fallback_total: int,
    model_devices: Sequence[str] = (),
) -> tuple[tuple[DeviceInfo, ...], int, int]:
    """The devices a model uses, each with its layer count; plus offloaded and total layers.

    In use: the devices llama.cpp gave the model (model_devices: they hold its layers, and run
    operations offloaded from the CPU even when they hold none), any device holding layers, the
    CPU (which always keeps the input layer) and ggml's accelerators (used beside the CPU
    backend). fallback_total is the model's layer count from its metadata, used only if
    llama.cpp logged no placement.
    """
    per_device = Counter(layers.values())
    host_names = {d.name for d in all_devices if d.type in _HOST_TYPES}
    used = [
        replace(d, layers=per_device.get(d.name, 0))
        for d in all_devices
        if d.type in _HOST_TYPES or per_device.get(d.name, 0) or d.name in model_devices
    ]
    known = {d.name for d in all_devices}
    used += [DeviceInfo(name, layers=n) for name, n in per_device.items() if name not in known]
    offloaded = sum(n for name, n in per_device.items() if name not in host_names)
    if not layers:
        log.warning("llama.cpp logged no layer placement; assuming every layer is on the CPU")
        cpu = next((d for d in used if d.type == "cpu"), None)
        if cpu is not None:
            used[used.index(cpu)] = replace(cpu, layers=fallback_total)
        return tuple(used), 0, fallback_total
    return tuple(used), offloaded, len(layers)


def backend_of(devices: Sequence[DeviceInfo]) -> str:
    """The backend of the first GPU-like device holding layers ("cuda", "metal"...), or "cpu"."""
    for d in devices:
        if d.layers and d.type not in _HOST_TYPES:
            return (d.backend or d.name).lower()
    return "cpu"


def placement(
    settings: WorkerSettings,
    all_devices: Sequence[DeviceInfo],
    load_log: Iterable[str],
    n_layers: int,
    model_devices: Sequence[str],
    cuda_visible: str | None,
) -> Placement:
    """The Placement of a loaded model, from llama.cpp's devices and its load log."""
    layers = layer_devices(load_log)
    used, offloaded, total = devices_in_use(all_devices, layers, n_layers, model_devices)
    return Placement(
        backend=backend_of(used),
        visible_devices=visible_devices(cuda_visible),
        n_gpu_layers=settings.n_gpu_layers,
        main_gpu=settings.main_gpu,
        split_mode=settings.split_mode,
        tensor_split=tuple(settings.tensor_split),
        devices=used,
        offloaded_layers=offloaded,
        total_layers=total,
    )
