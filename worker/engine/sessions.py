"""Sessions: conversations the worker keeps, each as the exact token ids of its turns.

The transcript is the truth and the KV cache is only a cache of it. A session holds the token
ids of every committed turn (what the chat template put between turns, the new input, and the
tokens the model generated, never text rendered again) and where each turn ends. A turn's
prompt is the transcript followed by the turn's own tokens, so the prefix cache
(engine/prefix_cache.py) finds the session's KV in whichever sequence still holds it and only the
new tokens are prefilled; when no sequence holds it any more, the whole transcript is prefilled
again and the answer is the same.

Rules, all enforced here, on the event loop's thread (so no lock is needed):

- **One turn at a time.** ``begin_turn`` marks the session busy; a second turn, a rollback or a
  fork while it runs would race its commit, so the turn is refused (SESSION_BUSY) and so is the
  rollback. A fork reads only committed turns and may run.
- **A turn commits atomically**, when its final event arrives (``commit``), and the session is
  free for the next turn at once, before the client has the answer. A turn that fails or is
  cancelled never calls it, and the session is exactly as before once it ends (``end_turn``).
- **Sessions expire** after their TTL of disuse. An expired session is reaped lazily (every
  call sweeps at most once a second) and its id remembered for a while, so that a late client
  hears SESSION_EXPIRED rather than SESSION_NOT_FOUND.
- **A bounded number** of sessions: opening one more is refused (SESSION_LIMIT).
- **Images** (a vision model's): a transcript keeps each image's bytes beside the negative ids
  of its positions (engine/media.py), so that a turn whose KV cache is gone can read them
  again. At most ``max_images`` per session; the bytes of every session's images together stay
  within the ``ImageBank``'s budget (equal images, as in forks, are kept once). A turn holds
  its new images in the bank before it runs (``reserve``), and gives them back if it does not
  commit.

Transcripts are kept as ``array('i')``: 4 bytes a token, not a Python int object each.
"""

from __future__ import annotations

import secrets
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llamagrid.worker.engine.errors import EngineError, Reason, invalid
from llamagrid.worker.engine.events import SessionCommit
from llamagrid.worker.engine.media import PlacedImage
from llamagrid.worker.engine.requests import ImageInput, SessionRef

#: What every session id starts with.
ID_PREFIX = "ses_"
#: The longest session id accepted in a request (ours are 26 characters).
MAX_ID_CHARS = 128
#: Expired ids remembered, so that a late client hears "expired" and not "not found".
EXPIRED_MEMORY = 4096
#: Seconds between two sweeps for expired sessions.
SWEEP_INTERVAL_S = 1.0


@dataclass(eq=False)
class Session:
    """One conversation: its committed transcript, and the turn running on it, if any."""

    session_id: str
    ttl_s: int
    last_used: float
    tokens: array[int] = field(default_factory=lambda: array("i"))
    #: The transcript's length at the end of each committed turn.
    turn_ends: list[int] = field(default_factory=list)
    #: Whether a turn is running.
    busy: bool = False
    #: Counts the turns begun: ``end_turn`` ends only the turn it names.
    turn_id: int = 0
    #: Cancels the running turn's generation (set once it has one).
    cancel: Callable[[EngineError], None] | None = None
    #: Set by close: a running turn must not commit.
    closed: bool = False
    #: Set by cancel_turn: the running turn must not commit.
    cancel_pending: bool = False
    #: The transcript's images, in order of start (held in the table's ImageBank).
    images: list[PlacedImage] = field(default_factory=list)
    #: The running turn's new images, held until it commits or ends.
    pending: list[PlacedImage] = field(default_factory=list)

    @property
    def turns(self) -> int:
        """Committed turns."""
        return len(self.turn_ends)

    def expires_at(self) -> float:
        """When the session expires unless used again (time.monotonic's clock)."""
        return self.last_used + self.ttl_s


@dataclass
class _Held:
    image: ImageInput
    holders: int = 0


class ImageBank:
    """The encoded images of every session's transcript: each image once, however many
    sessions hold it, and their bytes within a budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        #: Bytes of the images held.
        self.bytes = 0
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, images: Sequence[PlacedImage]) -> list[PlacedImage]:
        """Hold each image, all or none, returned as the bank keeps it; raises SESSION_LIMIT
        when the images not held yet would pass the budget."""
        new = {p.digest: len(p.image.data) for p in images if p.digest not in self._held}
        if self.bytes + sum(new.values()) > self.max_bytes:
            raise EngineError(
                Reason.SESSION_LIMIT,
                f"the sessions on this worker hold {self.bytes} bytes of images; "
                f"{sum(new.values())} more would pass its budget of {self.max_bytes} "
                "(--session-image-mib): close sessions, or wait for some to expire",
                retry_after_s=1.0,
            )
        kept: list[PlacedImage] = []
        for p in images:
            held = self._held.get(p.digest)
            if held is None:
                held = self._held[p.digest] = _Held(p.image)
                self.bytes += len(p.image.data)
            held.holders += 1
            kept.append(PlacedImage(p.start, p.digest, held.image))
        return kept

    def release(self, images: Sequence[PlacedImage]) -> None:
        """Stop holding each image; one no session holds any more is dropped."""
        for p in images:
            held = self._held[p.digest]
            held.holders -= 1
            if not held.holders:
                del self._held[p.digest]
                self.bytes -= len(held.image.data)


class SessionTable:
    """The worker's sessions. Call only from the event loop's thread."""

    def __init__(
        self,
        max_sessions: int,
        default_ttl_s: int,
        max_ttl_s: int,
        clock: Callable[[], float] = time.monotonic,
        max_images: int = 32,
        image_bytes: int = 1 << 30,
    ) -> None:
        self.max_sessions = max_sessions
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s
        #: Most images in one session's transcript.
        self.max_images = max_images
        self.bank = ImageBank(image_bytes)
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        #: Tokens of earlier turns that turns had to prefill again (not resident, not saved).
        self.reprefilled_tokens = 0
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._sessions)

    def transcripts(self) -> list[array[int]]:
        """Every session's transcript (the arrays themselves: a commit extends them in place)."""
        return [s.tokens for s in self._sessions.values()]

    def busy_count(self) -> int:
        """Sessions with a turn running."""
        return sum(s.busy for s in self._sessions.values())

    # Life cycle.
    def open(
        self,
        ttl_s: int,
        tokens: Sequence[int] = (),
        turn_ends: Sequence[int] = (),
        images: Sequence[PlacedImage] = (),
    ) -> Session:
        """A new session, empty or holding a transcript and its images (already validated by
        the caller)."""
        self.sweep(force=len(self._sessions) >= self.max_sessions)
        if len(self._sessions) >= self.max_sessions:
            raise EngineError(
                Reason.SESSION_LIMIT,
                f"this worker holds {self.max_sessions} sessions, its maximum (--max-sessions); "
                "close one or wait for one to expire",
                retry_after_s=1.0,
            )
        ttl_s = self._ttl(ttl_s)
        self.check_image_count(len(images), "transcript.images")
        session = Session(
            session_id=ID_PREFIX + secrets.token_urlsafe(16),
            ttl_s=ttl_s,
            last_used=self._clock(),
            tokens=array("i", tokens),
            turn_ends=list(turn_ends),
            images=self.bank.hold(images),
        )
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str) -> Session:
        """A live session; raises SESSION_NOT_FOUND or SESSION_EXPIRED. Touches it."""
        self.sweep()
        session = self._sessions.get(session_id)
        if session is None or (not session.busy and session.expires_at() <= self._clock()):
            if session is not None:
                self._expire(session)
            raise self._missing(session_id)
        session.last_used = self._clock()
        return session

    def fork(self, session_id: str, turns: int, ttl_s: int) -> Session:
        """A new session holding the first ``turns`` committed turns of another."""
        source = self.get(session_id)
        length = self._length_at(source, turns)
        images = [p for p in source.images if p.start < length]
        return self.open(
            ttl_s or source.ttl_s, source.tokens[:length], source.turn_ends[:turns], images
        )

    def rollback(self, session_id: str, turns: int) -> Session:
        """Keep only the first ``turns`` committed turns."""
        session = self.get(session_id)
        if session.busy:
            raise _busy(session_id)
        length = self._length_at(session, turns)
        del session.tokens[length:]
        del session.turn_ends[turns:]
        kept = [p for p in session.images if p.start < length]
        self.bank.release(session.images[len(kept) :])
        session.images = kept
        return session

    def close(self, session_id: str) -> None:
        """Delete a session; a turn running on it is cancelled and commits nothing."""
        session = self.get(session_id)
        del self._sessions[session_id]
        session.closed = True
        self._drop_images(session)
        if session.cancel is not None:
            session.cancel(_closed(session_id))

    def cancel_turn(self, session_id: str) -> bool:
        """Cancel the turn running on a session; False when none runs."""
        session = self.get(session_id)
        if not session.busy or session.cancel_pending:
            return False
        session.cancel_pending = True
        if session.cancel is not None:  # else its turn is being tokenized: it checks after
            session.cancel(_cancelled(session_id))
            session.cancel = None
        return True

    # Turns.
    def begin_turn(self, ref: SessionRef) -> Session:
        """Mark the session busy for a turn; raises when it is missing, busy or not at the
        expected number of turns."""
        session = self.get(ref.session_id)
        if session.busy:
            raise _busy(ref.session_id)
        if ref.expected_turns is not None and ref.expected_turns != session.turns:
            raise EngineError(
                Reason.SESSION_LENGTH_MISMATCH,
                f"the session has {session.turns} committed turns, the request expected "
                f"{ref.expected_turns}",
                "session.expected_turns",
            )
        session.busy = True
        session.turn_id += 1
        return session

    def check_image_count(self, n: int, param: str, session: Session | None = None) -> None:
        """A session may hold at most max_images images."""
        held = len(session.images) if session is not None else 0
        if held + n > self.max_images:
            more = f"the session holds {held} images; {n} more" if session else f"{n} images"
            raise invalid(
                f"{more} would pass the limit of {self.max_images} images a session may hold "
                "(--max-session-images)",
                param,
            )

    def reserve(self, session: Session, images: Sequence[PlacedImage]) -> None:
        """Hold a turn's new images until it commits or ends; raises when the session, or
        the worker's budget, has no room for them."""
        if images:
            self.check_image_count(len(images), "messages", session)
            session.pending = self.bank.hold(images)

    def check_open(self, session: Session) -> None:
        """Raise if the session was closed, or its turn cancelled, while the turn ran."""
        if session.closed:
            raise _closed(session.session_id)
        if session.cancel_pending:
            raise _cancelled(session.session_id)

    def commit(self, session: Session, appended: Sequence[int]) -> SessionCommit:
        """Add a finished turn's tokens to its session."""
        self.check_open(session)
        session.tokens.extend(appended)
        session.turn_ends.append(len(session.tokens))
        new, session.pending = session.pending, []
        session.images += new
        starts = tuple(p.start for p in new)
        self.end_turn(session)  # the next turn may begin before this one's answer is sent
        return SessionCommit(session.turns, len(session.tokens), tuple(appended), starts)

    def end_turn(self, session: Session, turn_id: int | None = None) -> None:
        """The turn is over, committed or not (an uncommitted turn's images are let go). With
        ``turn_id``, only if that turn still runs (a committed turn has ended already, and
        another may have begun since)."""
        if not session.busy or (turn_id is not None and turn_id != session.turn_id):
            return
        self.bank.release(session.pending)
        session.pending = []
        session.busy = False
        session.cancel = None
        session.cancel_pending = False
        session.last_used = self._clock()

    # Expiry.
    def sweep(self, force: bool = False) -> int:
        """Reap expired sessions (at most once a second unless forced); how many went."""
        now = self._clock()
        if not force and now - self._swept < SWEEP_INTERVAL_S:
            return 0
        self._swept = now
        expired = [s for s in self._sessions.values() if not s.busy and s.expires_at() <= now]
        for session in expired:
            self._expire(session)
        return len(expired)

    def _expire(self, session: Session) -> None:
        if self._sessions.pop(session.session_id, None) is not None:
            self._drop_images(session)
        self._expired[session.session_id] = None
        while len(self._expired) > EXPIRED_MEMORY:
            self._expired.popitem(last=False)

    def _drop_images(self, session: Session) -> None:
        """A gone session's transcript images are let go (a running turn's, when it ends)."""
        self.bank.release(session.images)
        session.images = []

    def _missing(self, session_id: str) -> EngineError:
        shown = session_id if len(session_id) <= 40 else session_id[:40] + "..."
        if session_id in self._expired:
            return EngineError(
                Reason.SESSION_EXPIRED,
                f"session {shown!r} expired: it was not used for its TTL",
                "session_id",
            )
        return EngineError(
            Reason.SESSION_NOT_FOUND, f"session {shown!r} does not exist here", "session_id"
        )

    def _ttl(self, ttl_s: int) -> int:
        if ttl_s < 0 or ttl_s > self.max_ttl_s:
            raise invalid(
                f"ttl_s must be between 1 and {self.max_ttl_s} (0: the default, "
                f"{self.default_ttl_s})",
                "ttl_s",
            )
        return ttl_s or self.default_ttl_s

    @staticmethod
    def _length_at(session: Session, turns: int) -> int:
        if turns < 0 or turns > session.turns:
            raise invalid(
                f"turns must be between 0 and the session's {session.turns} committed turns",
                "turns",
            )
        return session.turn_ends[turns - 1] if turns else 0


def check_session_id(session_id: str) -> None:
    """A session id must be non-empty and short (it is echoed in errors and logs)."""
    if not session_id or len(session_id) > MAX_ID_CHARS:
        raise invalid(f"session_id must be 1 to {MAX_ID_CHARS} characters", "session_id")


def check_transcript(
    tokens: Sequence[int], turn_ends: Sequence[int], context_per_slot: int
) -> None:
    """A transcript to resume from: turn ends increasing, the last one its length, and room
    left in the context for one more token."""
    if not tokens and not turn_ends:
        return
    if not turn_ends or turn_ends[-1] != len(tokens):
        raise invalid(
            "transcript.turn_ends must end with the number of token_ids", "transcript.turn_ends"
        )
    if any(b <= a for a, b in zip((0, *turn_ends), turn_ends, strict=False)):
        raise invalid(
            "transcript.turn_ends must be positive and strictly increasing",
            "transcript.turn_ends",
        )
    if len(tokens) >= context_per_slot:
        raise EngineError(
            Reason.CONTEXT_LENGTH_EXCEEDED,
            f"the transcript holds {len(tokens)} tokens; a session must leave room in this "
            f"model's context of {context_per_slot} tokens per request",
            "transcript.token_ids",
        )


def _busy(session_id: str) -> EngineError:
    return EngineError(
        Reason.SESSION_BUSY,
        f"a turn is already running on session {session_id!r}; one turn runs at a time",
        "session_id",
    )


def _cancelled(session_id: str) -> EngineError:
    return EngineError(
        Reason.TURN_CANCELLED,
        f"the turn on session {session_id!r} was cancelled; nothing was committed",
        "session_id",
    )


def _closed(session_id: str) -> EngineError:
    return EngineError(
        Reason.SESSION_NOT_FOUND,
        f"session {session_id!r} was closed while this turn ran; nothing was committed",
        "session_id",
    )
