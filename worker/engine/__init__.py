"""The engine: one thread that owns the model, batches every request, and streams events back.

Transport-free: nothing here imports grpc or the generated stubs, so the engine can sit behind
any transport and be tested without one. Errors carry a Reason (errors.py), never a status code.
It reaches llama.cpp only through the native room (llamagrid.worker.native).
"""
