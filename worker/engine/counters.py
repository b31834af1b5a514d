"""Running totals the engine thread keeps, and the snapshot /metrics reads between two steps.

Plain numbers, each written by the engine thread only: nothing on the hot path takes a lock.
llamagrid.worker.metrics turns snapshots into Prometheus samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from llamagrid.worker.engine.events import Final, FinishReason
from llamagrid.worker.engine.reports import TierCounts


@dataclass
class EngineCounters:
    """Running totals since the worker started. Written only by the engine thread."""

    #: Prompt tokens decoded (prefilled); tokens reused from the prefix cache are not.
    prompt_tokens: int = 0
    #: Prompt tokens whose KV cells were reused from the prefix cache.
    prompt_tokens_cached: int = 0
    #: Time requests spent in prefill (admission to first token), summed over requests.
    prompt_seconds: float = 0.0
    #: Tokens generated (the usage's completion tokens).
    predicted_tokens: int = 0
    #: Tokens sampled after the first one, i.e. by decode steps: the decode rate's numerator.
    predicted_steps: int = 0
    #: Time requests spent decoding (first token to last), summed over requests.
    predicted_seconds: float = 0.0
    #: llama_decode calls of the generation context.
    decode_calls: int = 0
    #: Busy slots summed over those calls.
    busy_slots: int = 0
    #: The longest sequence (prompt plus generated tokens) a request has held.
    n_tokens_max: int = 0
    #: Finished generations by finish reason ("eos", "stop_string", "length").
    finished: dict[str, int] = field(default_factory=dict)
    #: Embedding inputs accepted, and their tokens.
    embed_inputs: int = 0
    embed_tokens: int = 0
    #: Prompt tokens whose KV cells were restored from the host tier.
    prompt_tokens_restored: int = 0
    #: Sequences saved to the host tier, and restored from it.
    host_saves: int = 0
    host_restores: int = 0

    def on_decode(self, busy: int) -> None:
        """One llama_decode ran with busy slots in the batch."""
        self.decode_calls += 1
        self.busy_slots += busy

    def on_final(self, final: Final) -> None:
        """A generation finished; count it with the same numbers its usage reports."""
        u = final.usage
        self.prompt_tokens += u.prompt_tokens - u.cached_tokens - u.restored_tokens
        self.prompt_tokens_cached += u.cached_tokens
        self.prompt_tokens_restored += u.restored_tokens
        self.prompt_seconds += u.prefill_ms / 1000
        self.predicted_tokens += u.completion_tokens
        # The first token comes out of the prefill batch; an EOS is sampled but not counted.
        eos = final.finish_reason is FinishReason.EOS
        self.predicted_steps += max(u.completion_tokens - 1 + eos, 0)
        self.predicted_seconds += u.decode_ms / 1000
        self.n_tokens_max = max(self.n_tokens_max, u.prompt_tokens + u.completion_tokens)
        reason = final.finish_reason.value
        self.finished[reason] = self.finished.get(reason, 0) + 1

    def on_embed(self, token_counts: list[int]) -> None:
        """An Embed request's inputs were accepted."""
        self.embed_inputs += len(token_counts)
        self.embed_tokens += sum(token_counts)

    def copy(self) -> EngineCounters:
        """An independent copy (for a snapshot)."""
        return dataclasses.replace(self, finished=dict(self.finished))


@dataclass(frozen=True)
class EngineSnapshot:
    """The engine's counters and current state, taken on the engine thread between two steps."""

    counters: EngineCounters
    slots: int
    slots_busy: int
    queued: int
    max_queue: int
    kv_cells_used: int
    kv_cells_total: int
    #: Tokens that idle sequences keep in the KV cache for prefix reuse.
    prefix_cache_tokens: int
    embed_queued: int
    #: Layers on each device in use ({"CPU": 31}).
    device_layers: dict[str, int]
    #: Sessions held, and the host tier's size.
    sessions: int = 0
    host_bytes: int = 0
    host_entries: int = 0
    session_tokens_reprefilled: int = 0
    #: Sessions by KV tier (counted after the engine thread answered, from tier_holders).
    session_tiers: TierCounts = field(default_factory=TierCounts)
    #: What each tier holds (see Scheduler.tier_holders); emptied once counted.
    tier_holders: tuple[list[list[int]], list[list[int]]] = ([], [])
