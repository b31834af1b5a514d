"""Device placement and the GPU offload checks, on llama.cpp's real outputs where this
CPU-only machine has them and on llama.cpp's documented formats for the GPU cases. The check on
a real model's load log is in tests/integration/test_worker_devices.py."""

from __future__ import annotations

import logging

import pytest

from llamagrid.worker.native import llama_backend as lb
from llamagrid.worker.native.devices import (
    DeviceInfo,
    OffloadError,
    Placement,
    backend_of,
    check_offload_possible,
    check_offloaded,
    devices_in_use,
    layer_devices,
    visible_devices,
)

GIB = 1 << 30
H100 = "NVIDIA H100 80GB HBM3"
CUDA0 = DeviceInfo("CUDA0", H100, "gpu", "CUDA", 70 * GIB, 80 * GIB, "0000:19:00.0")
CUDA1 = DeviceInfo("CUDA1", H100, "gpu", "CUDA", 75 * GIB, 80 * GIB, "0000:3b:00.0")
BLAS = DeviceInfo("BLAS", "OpenBLAS", "accel", "BLAS")
CPU = DeviceInfo("CPU", "AMD EPYC", "cpu", "CPU", 100 * GIB, 128 * GIB)


def lines(assignments: dict[int, str]) -> list[str]:
    """What llama.cpp's load_tensors logs for each layer (llama-model.cpp's format)."""
    return [
        f"load_tensors: layer {il:3d} assigned to device {dev}, is_swa = 0\n"
        for il, dev in assignments.items()
    ]


def placement(devices: tuple[DeviceInfo, ...], offloaded: int, n_gpu_layers: int) -> Placement:
    return Placement(
        backend=backend_of(devices),
        visible_devices=(),
        n_gpu_layers=n_gpu_layers,
        main_gpu=0,
        split_mode="layer",
        tensor_split=(),
        devices=devices,
        offloaded_layers=offloaded,
        total_layers=31,
    )


def test_this_build_reports_its_cpu_device() -> None:
    lb.init_backend()
    devices = lb.devices()
    cpu = [d for d in devices if d.type == "cpu"]
    assert len(cpu) == 1
    assert cpu[0].name == "CPU" and cpu[0].backend == "CPU"
    assert cpu[0].memory_total > 0
    assert "CPU" in lb.backend_names()


def test_layers_split_across_two_gpus() -> None:
    log = lines({il: "CUDA0" if il < 16 else "CUDA1" for il in range(31)})
    used, offloaded, total = devices_in_use([CUDA0, CUDA1, BLAS, CPU], layer_devices(log), 31)
    assert [(d.name, d.layers) for d in used] == [
        ("CUDA0", 16),
        ("CUDA1", 15),
        ("BLAS", 0),
        ("CPU", 0),
    ]
    assert (offloaded, total) == (31, 31)
    assert used[0].memory_total == 80 * GIB and used[0].device_id == "0000:19:00.0"
    assert backend_of(used) == "cuda"


def test_partial_offload_keeps_the_first_layers_on_the_cpu() -> None:
    # n_gpu_layers=10: llama.cpp offloads the last 10 (the output layer among them).
    log = lines({il: "CPU" if il < 21 else "CUDA0" for il in range(31)})
    used, offloaded, total = devices_in_use([CUDA0, CUDA1, CPU], layer_devices(log), 31)
    assert [(d.name, d.layers) for d in used] == [("CUDA0", 10), ("CPU", 21)]
    assert (offloaded, total) == (10, 31)


def test_a_gpu_given_to_the_model_is_listed_even_without_layers() -> None:
    # n_gpu_layers=0 on a CUDA build: llama.cpp still runs big CPU-weight matmuls on the GPU.
    log = lines(dict.fromkeys(range(31), "CPU"))
    used, offloaded, total = devices_in_use([CUDA0, CUDA1, CPU], layer_devices(log), 31, ["CUDA0"])
    assert [(d.name, d.layers) for d in used] == [("CUDA0", 0), ("CPU", 31)]
    assert (offloaded, total) == (0, 31)
    assert backend_of(used) == "cpu"


def test_no_placement_logged_falls_back_to_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        used, offloaded, total = devices_in_use([CUDA0, CPU], {}, 31)
    assert [(d.name, d.layers) for d in used] == [("CPU", 31)]
    assert (offloaded, total) == (0, 31)
    assert "no layer placement" in caplog.text


def test_a_cpu_only_build_refuses_to_offload_before_loading() -> None:
    lb.init_backend()
    if lb.supports_gpu_offload():
        pytest.skip("this llama.cpp build can offload")
    with pytest.raises(OffloadError) as err:
        check_offload_possible(-1, lb.supports_gpu_offload(), lb.backend_names(), None)
    message = str(err.value)
    assert "n_gpu_layers (--n-gpu-layers) is -1" in message
    assert "no GPU backend" in message and "backends: CPU" in message
    assert "CMAKE_ARGS=-DGGML_CUDA=on" in message
    assert "--n-gpu-layers 0" in message
    check_offload_possible(0, lb.supports_gpu_offload(), lb.backend_names(), None)  # no raise


def test_a_cuda_build_with_every_gpu_hidden_says_so() -> None:
    with pytest.raises(OffloadError) as err:
        check_offload_possible(20, False, ["CUDA", "CPU"], "")
    message = str(err.value)
    assert "has the CUDA backend but it found no GPU device" in message
    assert "CUDA_VISIBLE_DEVICES is ''" in message
    check_offload_possible(20, True, ["CUDA", "CPU"], "0")  # a visible GPU: no raise


def test_no_layer_on_a_gpu_after_loading_fails() -> None:
    # E.g. a build with the RPC backend but no server: offload "supported", no device used.
    cpu_only = (DeviceInfo("CPU", "AMD EPYC", "cpu", "CPU", layers=31),)
    with pytest.raises(OffloadError) as err:
        check_offloaded(placement(cpu_only, 0, -1), "0")
    message = str(err.value)
    assert "placed none of the model's 31 layers on a GPU (devices in use: CPU)" in message
    assert "CUDA_VISIBLE_DEVICES is '0'" in message
    check_offloaded(placement(cpu_only, 0, 0), None)  # nothing asked: fine


def test_fewer_layers_than_asked_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    devices = (
        DeviceInfo("CUDA0", H100, "gpu", "CUDA", layers=10),
        DeviceInfo("CPU", "AMD EPYC", "cpu", "CPU", layers=21),
    )
    check_offloaded(placement(devices, 10, 10), None)
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        check_offloaded(placement(devices, 10, -1), None)
    assert "offloaded only 10 of 31 layers" in caplog.text


def test_visible_devices_parsing() -> None:
    assert visible_devices(None) == ()
    assert visible_devices("") == ()
    assert visible_devices("0") == ("0",)
    assert visible_devices(" 1, GPU-8c1f0e0a ,") == ("1", "GPU-8c1f0e0a")
