"""llamagrid worker: one process, one GGUF model, served over the llamagrid.v1 gRPC API."""
