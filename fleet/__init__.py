"""The fleet config: one YAML/JSON file describing models, replicas, GPUs and the gateway.

Shared data, read by the supervisor (to plan processes), the gateway and the worker (for their
defaults). It imports only the settings classes it fills in, never the supervisor.
"""
