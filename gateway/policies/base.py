"""The one interface every load-balancing policy implements, and what it is given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Routable(Protocol):
    """What a policy may read of a worker."""

    @property
    def address(self) -> str:
        """The worker's gRPC address, unique in the pool."""
        ...

    @property
    def requests(self) -> int:
        """Requests running or queued on the worker (its report, or the gateway's count)."""
        ...

    @property
    def pressure(self) -> float:
        """Requests per slot: ``requests`` divided by the worker's slots."""
        ...

    @property
    def slots(self) -> int:
        """Requests the worker runs at once (0 when unknown)."""
        ...

    @property
    def started(self) -> int:
        """Calls this gateway has sent to the worker so far."""
        ...


W = TypeVar("W", bound=Routable)


@dataclass(frozen=True)
class RouteRequest:
    """What the gateway knows of a request when it picks a worker."""

    #: The model alias asked for.
    model: str
    #: The leading part of the prompt as sent (None when the request has no prompt).
    prefix_key: str | None = None
    #: The client's session: the X-Session-ID header, else the OpenAI ``user`` field.
    session_key: str | None = None
    #: The worker holding the request's server-side session (SessionService): the request
    #: goes there whatever the model's policy.
    home: str | None = None
    #: The request opens a server-side session: it goes where sessions per slot are fewest.
    new_session: bool = False


@dataclass(frozen=True)
class Choice(Generic[W]):
    """The worker a policy chose and why, as a short ``policy:reason`` label."""

    worker: W
    reason: str


class Policy(Protocol):
    """Chooses one worker among healthy candidates (never empty) for a request."""

    name: str

    def select(self, workers: Sequence[W], request: RouteRequest) -> Choice[W]:
        """The chosen worker; deterministic for the same workers, loads, request and the
        requests the policy has seen before (prefix_affinity remembers placements)."""
        ...


def least_loaded(workers: Sequence[W]) -> W:
    """The worker with the fewest requests per slot; ties go to the one given fewer calls so
    far (so idle workers take turns), then to the lower address."""
    return min(
        workers,
        key=lambda worker: (
            worker.pressure,
            worker.requests,
            worker.started,
            worker.address,
        ),
    )
