"""llamagrid worker: one process, one GGUF model, served over the llamagrid.v1 gRPC API.

Three rooms, each importing only the one below it:
- ``rpc``: the gRPC layer (server, servicer, proto translation, reason -> status code table);
- ``engine``: the transport-free engine (validation, the engine thread, scheduling, sampling);
- ``native``: the llama.cpp boundary, the only code that imports llama_cpp.
``main``, ``settings``, ``model_source`` and ``metrics`` wire them into a process.
"""
