"""`llamagrid`: the command line, and the supervisor that runs workers and the gateway."""
