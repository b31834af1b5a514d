"""The llamagrid HTTP gateway: OpenAI-compatible HTTP in front of llamagrid gRPC workers."""
