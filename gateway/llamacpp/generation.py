"""llama-server's ``generation_settings``: a request's sampling options, with the worker's
defaults (llama.cpp's, as worker/native/sampler.py's SamplerConfig holds them) for the unset
ones, plus ``n_ctx`` and ``model``. /props shows the defaults alone as
``default_generation_settings``.
"""

from __future__ import annotations

from typing import Any

from llamagrid.v1 import inference_pb2 as pb

#: llama.cpp's defaults for every option llamagrid honours (the worker's SamplerConfig).
DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
    "dry_multiplier": 0.0,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_penalty_last_n": -1,
    "xtc_probability": 0.0,
    "xtc_threshold": 0.1,
    "top_n_sigma": -1.0,
    "min_keep": 0,
    "ignore_eos": False,
    "samplers": [
        "penalties",
        "dry",
        "top_n_sigma",
        "top_k",
        "typ_p",
        "top_p",
        "min_p",
        "xtc",
        "temperature",
    ],
}


def default_settings(info: pb.ModelInfo | None, model: str) -> dict[str, Any]:
    """The settings of a request that sets nothing."""
    return {
        "n_ctx": info.context_size if info is not None else 0,
        "model": model,
        **DEFAULTS,
        "n_predict": -1,
        "n_keep": 0,
        "n_probs": 0,
        "seed": -1,
        "stop": [],
        "stream": False,
        "grammar": "",
        "logit_bias": [],
        "cache_prompt": True,
        "id_slot": -1,
    }


def request_settings(
    proto: pb.GenerateRequest, info: pb.ModelInfo | None, model: str, stream: bool
) -> dict[str, Any]:
    """The settings a Generate call runs with: its own options over the defaults."""
    sampling = proto.sampling
    settings = default_settings(info, model)
    for name in DEFAULTS:
        if name == "samplers":
            if sampling.samplers:
                settings[name] = list(sampling.samplers)
        elif sampling.HasField(name):  # type: ignore[arg-type]  # the names are fields
            value = getattr(sampling, name)
            # The wire's floats are 32-bit: 0.7 arrives as 0.699999988...; show it as sent.
            settings[name] = round(value, 6) if isinstance(value, float) else value
    if sampling.HasField("max_tokens"):
        settings["n_predict"] = sampling.max_tokens
    if sampling.HasField("seed"):
        settings["seed"] = sampling.seed
    settings["n_probs"] = sampling.top_logprobs
    settings["stop"] = list(sampling.stop)
    settings["stream"] = stream
    settings["grammar"] = sampling.grammar
    settings["logit_bias"] = [[token, bias] for token, bias in sorted(sampling.logit_bias.items())]
    return settings
