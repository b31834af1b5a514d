"""The `llamagrid` command: `worker`, `gateway` and `serve` subcommands."""

from __future__ import annotations

import sys

USAGE = """usage: llamagrid {serve,worker,gateway} [options]

  serve     start a worker on a model and the gateway in front of it (default: SmolLM2)
  worker    serve one GGUF model over gRPC (llamagrid.v1)
  gateway   serve the OpenAI-compatible HTTP API in front of workers

`llamagrid COMMAND --help` lists each command's options."""


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a subcommand's own main()."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "worker":
        from llamagrid.worker.main import main as run
    elif command == "gateway":
        from llamagrid.gateway.main import main as run
    elif command == "serve":
        from llamagrid.supervisor.serve import main as run
    else:
        sys.exit(f"llamagrid: unknown command '{command}'\n\n{USAGE}")
    run(rest)
