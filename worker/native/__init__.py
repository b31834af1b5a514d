"""The native boundary: the only room that imports llama_cpp (model, context, batch, sampler,
grammar conversion, devices)."""
