"""The `llamagrid` command: `worker`, `gateway` and `serve` subcommands."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llamagrid.supervisor.serve import Dialect

#: The subcommands that run `llamagrid serve`, each reading its own command line.
DIALECTS: dict[str, Dialect] = {
    "serve": "serve",
    "llama-server": "llama-server",
    "llama-cpp-python": "llama-cpp-python",
}

USAGE = """usage: llamagrid {serve,worker,gateway,llama-server,llama-cpp-python} [options]

  serve     start a worker on a model and the gateway in front of it (default: SmolLM2)
  llama-server      `serve` with llama.cpp's llama-server defaults (also llamagrid-llama-server)
  llama-cpp-python  `serve` from llama-cpp-python's server flags and environment variables
                    (also llamagrid-llama-cpp-python)
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
    elif command in DIALECTS:
        from llamagrid.supervisor.serve import main as serve

        serve(rest, DIALECTS[command])
        return
    else:
        sys.exit(f"llamagrid: unknown command '{command}'\n\n{USAGE}")
    run(rest)


def llama_server() -> None:
    """The `llamagrid-llama-server` command: `llamagrid llama-server`."""
    main(["llama-server", *sys.argv[1:]])


def llama_cpp_python() -> None:
    """The `llamagrid-llama-cpp-python` command: `llamagrid llama-cpp-python`."""
    main(["llama-cpp-python", *sys.argv[1:]])
