"""What the processes of a fleet share: the fleet config, and following the supervisor's life.

Read by the supervisor, the gateway and the worker. The config (config.py) imports only the
settings classes it fills in; parent_death.py imports nothing of ours. Neither imports the
supervisor.
"""
