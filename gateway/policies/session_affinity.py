"""session_affinity: one session (X-Session-ID, or ``user``) stays on one worker while healthy.

Rendezvous hashing: each worker scores hash(session, worker) and the highest wins. When that
worker leaves the candidates the session moves to its runner-up, and it comes back when the
worker does; no other session moves.
"""

from __future__ import annotations

from collections.abc import Sequence

from llamagrid.gateway.policies.base import Choice, RouteRequest, W, least_loaded
from llamagrid.gateway.policies.hashing import hash64


class SessionAffinity:
    """Pins sessions to workers; requests without a session go to the least loaded."""

    name = "session_affinity"

    def select(self, workers: Sequence[W], request: RouteRequest) -> Choice[W]:
        """The session's worker, or the least loaded one for a request without a session."""
        if not request.session_key:
            return Choice(least_loaded(workers), "least_load:no_session")
        key = request.session_key
        worker = max(
            workers, key=lambda worker: (hash64(f"{key}\x00{worker.address}"), worker.address)
        )
        return Choice(worker, "session_affinity:pinned")
