"""Device placement read from a real load: SmolLM2 loaded by this machine's llama.cpp build."""

from __future__ import annotations

from llamagrid.worker.model_source import default_model_path
from llamagrid.worker.native import llama_backend as lb
from llamagrid.worker.native.devices import backend_of, devices_in_use, layer_devices


def test_the_real_load_log_places_every_smollm2_layer_on_the_cpu() -> None:
    lb.init_backend()
    model = lb.Model(lb.ModelOptions(path=str(default_model_path())))
    try:
        layers = layer_devices(model.load_log)
        assert sorted(layers) == list(range(model.n_layers))  # 30 repeating + output
        assert model.device_names == []  # this llama.cpp exports it; no GPU here
        used, offloaded, total = devices_in_use(lb.devices(), layers, model.n_layers)
    finally:
        model.close()
    assert (offloaded, total) == (0, 31)
    assert [(d.name, d.layers) for d in used if d.type == "cpu"] == [("CPU", 31)]
    assert backend_of(used) == "cpu"
