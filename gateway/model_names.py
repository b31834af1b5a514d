"""Which served model a request's ``model`` names.

As in llama-server and llama-cpp-python's server, a gateway that serves a single model answers
every request with it, whatever ``model`` says (clients hard-coded to ``gpt-3.5-turbo`` work),
unless --strict-model-names is set. With several models served, a name must match an alias
(an unknown one stays a 404, from the pool). An empty name means the only model too.
"""

from __future__ import annotations

from starlette.requests import Request

from llamagrid.gateway.pool import WorkerPool


def resolve(pool: WorkerPool, name: str, strict: bool) -> str:
    """The alias to route ``name`` to: ``name`` itself when a worker of the pool has it (healthy
    or not: a model whose workers are down stays a 503), when strict matching is on, or when the
    pool's workers have no model or several."""
    known = sorted({alias for worker in pool.workers for alias in worker.models})
    if name in known or (strict and name) or len(known) != 1:
        return name
    return known[0]


def resolve_for(request: Request, name: str) -> str:
    """``resolve`` with the app's pool and --strict-model-names."""
    dispatcher = request.app.state.dispatcher
    strict = bool(getattr(request.app.state, "strict_model_names", False))
    return resolve(dispatcher.pool, name, strict)
