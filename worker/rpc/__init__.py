"""The worker's gRPC layer: the server, the llamagrid.v1 servicer, proto translation, status codes.

Only this room imports grpc and the generated stubs. It turns proto messages into engine
requests (translate.py), hands them to the engine, and maps the engine's transport-free errors
onto gRPC status codes (status.py).
"""
