"""ggml's device and backend registry, read through ctypes (llama-cpp-python binds none of it).

Imported by llama_backend, which re-exports ``backend_names`` and ``devices``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as lc
from llama_cpp._ggml import libggml as _ggml

from llamagrid.worker.native.devices import DEVICE_TYPES, DeviceInfo


def _bind(name: str, restype: Any, *argtypes: Any) -> Any:
    """A ggml function (llama-cpp-python binds none of ggml's device API itself)."""
    fn = getattr(_ggml, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


_vp, _size = ctypes.c_void_p, ctypes.c_size_t
_dev_count = _bind("ggml_backend_dev_count", _size)
_dev_get = _bind("ggml_backend_dev_get", _vp, _size)
_dev_name = _bind("ggml_backend_dev_name", ctypes.c_char_p, _vp)
_dev_description = _bind("ggml_backend_dev_description", ctypes.c_char_p, _vp)
_dev_type = _bind("ggml_backend_dev_type", ctypes.c_int, _vp)
_dev_memory = _bind(
    "ggml_backend_dev_memory", None, _vp, ctypes.POINTER(_size), ctypes.POINTER(_size)
)
_dev_reg = _bind("ggml_backend_dev_backend_reg", _vp, _vp)
_dev_props = _bind("ggml_backend_dev_get_props", None, _vp, _vp)
_reg_count = _bind("ggml_backend_reg_count", _size)
_reg_get = _bind("ggml_backend_reg_get", _vp, _size)
_reg_name = _bind("ggml_backend_reg_name", ctypes.c_char_p, _vp)


def _bind_ext(names: tuple[str, ...], restype: Any, *argtypes: Any) -> Any:
    """A function of llama.cpp's llama-ext.h (C++ linkage), found as llama_cpp_ext finds its own."""
    for name in names:
        fn = getattr(lc.llama_cpp._lib, name, None)
        if fn is not None:
            fn.restype, fn.argtypes = restype, list(argtypes)
            return fn
    return None


_model_n_devices = _bind_ext(
    ("llama_model_n_devices", "_Z21llama_model_n_devicesPK11llama_model"), ctypes.c_int32, _vp
)
_model_get_device = _bind_ext(
    ("llama_model_get_device", "_Z22llama_model_get_devicePK11llama_modeli"), _vp, _vp, ctypes.c_int
)


class _DevProps(ctypes.Structure):
    """ggml_backend_dev_props, with room to spare should a later ggml append fields."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("memory_free", _size),
        ("memory_total", _size),
        ("type", ctypes.c_int),
        ("device_id", ctypes.c_char_p),
        ("reserved", ctypes.c_byte * 256),
    ]


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def backend_names() -> list[str]:
    """The ggml backends this llama.cpp build registered ("CPU", "CUDA", "BLAS", ...)."""
    return [_text(_reg_name(_reg_get(i))) for i in range(_reg_count())]


def devices() -> list[DeviceInfo]:
    """Every device ggml registered, in its order, with memory as of now."""
    out = []
    for i in range(_dev_count()):
        dev = _dev_get(i)
        free, total = _size(0), _size(0)
        _dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        props = _DevProps()
        _dev_props(dev, ctypes.addressof(props))
        kind = _dev_type(dev)
        out.append(
            DeviceInfo(
                name=_text(_dev_name(dev)),
                description=_text(_dev_description(dev)),
                type=DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else "",
                backend=_text(_reg_name(_dev_reg(dev))),
                memory_free=int(free.value),
                memory_total=int(total.value),
                device_id=_text(props.device_id),
            )
        )
    return out


def model_device_names(model_ptr: Any) -> list[str] | None:
    """The devices llama.cpp gave a model besides the CPU; None if this llama.cpp does not
    export llama_model_get_device."""
    if _model_n_devices is None or _model_get_device is None:
        return None
    n = int(_model_n_devices(model_ptr))
    return [_text(_dev_name(_model_get_device(model_ptr, i))) for i in range(n)]
