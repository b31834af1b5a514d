"""What the first request would otherwise pay for, paid when the gateway starts.

anyio (under starlette's streaming responses) imports its modules lazily, on the first access
to each name. The first streamed response then imported anyio's stream and socket modules on
the event loop, under the import lock, while every other request waited: tens of milliseconds
of TTFT that no later request paid. Resolving the names at start-up moves that cost out of the
serving path.
"""

from __future__ import annotations

import types

import anyio

#: Packages that import their modules on first attribute access (PEP 562 ``__getattr__``).
LAZY_PACKAGES: tuple[types.ModuleType, ...] = (anyio,)


def resolve_lazy_names(module: types.ModuleType) -> int:
    """Import everything a lazily-importing package names; returns how many names it has."""
    names = dir(module)
    for name in names:
        getattr(module, name)
    return len(names)


def warm_up() -> None:
    """Import now what the first request would import."""
    for package in LAZY_PACKAGES:
        resolve_lazy_names(package)
