"""Engine policies without a model: prefix-cache placement and embedding packing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llamagrid.worker.engine.embedder import Embedder
from llamagrid.worker.engine.prefix_cache import PrefixCache, Reuse, common_prefix


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([1, 2, 3], [9]) == 0
    assert common_prefix([], [1]) == 0
    long = list(range(1000))
    assert common_prefix(long, [*long[:637], -1, *long[638:]]) == 637


def test_placement_prefers_the_longest_cached_prefix_then_lru() -> None:
    cache = PrefixCache(3, shareable=False, min_reuse=1)
    cache.retain(0, [1, 2, 3, 4])
    cache.retain(1, [1, 9, 9])
    cache.retain(2, [7, 7])
    assert cache.plan([1, 2, 3, 4, 5], [0, 1, 2], {}) == Reuse(0, 4)
    # The whole prompt is cached: one token is still decoded, for its logits.
    assert cache.plan([1, 2, 3, 4], [0, 1, 2], {}) == Reuse(0, 3)
    # Nothing shared: the least recently used sequence is overwritten.
    assert cache.plan([5, 5], [0, 1, 2], {}) == Reuse(0, 0)
    cache.take(0)
    assert cache.plan([5, 5], [0, 1, 2], {}) == Reuse(0, 0)  # an empty one goes first


HEADER = [1, 2, 3]  # what every chat prompt starts with (the template's first tokens)


def tenant(n: int, length: int = 200) -> list[int]:
    return [*HEADER, *([100 + n] * length)]


def test_a_few_common_template_tokens_do_not_cost_another_tenants_cached_prompt() -> None:
    cache = PrefixCache(3, shareable=False)
    cache.retain(0, tenant(1))
    cache.retain(1, tenant(2))
    # Tenant 3 shares only the header with 0 and 1: the empty sequence 2 takes it, and both
    # cached system prompts survive.
    assert cache.plan([*tenant(3), 7], [0, 1, 2], {}) == Reuse(2, 0)
    cache.retain(2, tenant(3))
    # Tenant 1 again: its own sequence, everything but the question.
    assert cache.plan([*tenant(1), 7], [0, 1, 2], {}) == Reuse(0, len(tenant(1)))


def test_eviction_takes_a_prefix_held_twice_before_the_least_recently_used() -> None:
    cache = PrefixCache(4, shareable=False)
    cache.retain(0, [*tenant(1), 7])  # least recently used, and the only copy of tenant 1
    cache.retain(1, [*tenant(2), 8])
    cache.retain(2, [*tenant(2), 9])  # tenant 2 again: held twice
    # Tenant 4 evicts one of tenant 2's copies (the older), not tenant 1's only copy.
    assert cache.plan([*tenant(4), 5], [0, 1, 2], {}) == Reuse(1, len(HEADER))
    # A running sequence's prefix counts as a copy too.
    assert cache.plan([*tenant(4), 5], [0, 2], {3: tenant(1)}) == Reuse(0, len(HEADER))


def test_a_running_sequence_donates_its_prefix_shared_or_copied() -> None:
    busy = {0: [*tenant(1), 5, 6, 7]}
    prompt = [*tenant(1), 9]
    separate = PrefixCache(3, shareable=False)
    separate.retain(1, tenant(2))
    # Without shared cells the donor's buffer is copied into the empty sequence, then trimmed.
    assert separate.plan(prompt, [1, 2], busy) == Reuse(2, len(tenant(1)), source=0)
    # ...but only when that saves at least min_copy tokens over the best idle sequence.
    separate.retain(2, tenant(1, length=190))
    assert separate.plan(prompt, [1, 2], busy) == Reuse(2, len(tenant(1, length=190)))
    unified = PrefixCache(3, shareable=True)
    unified.retain(2, [8] * 20)
    unified.retain(1, tenant(2))
    # Shared cells cost nothing: the longer prefix is taken, into the least recently used
    # idle sequence (2), so seq 1 keeps its cache...
    assert unified.plan(prompt, [1, 2], busy) == Reuse(2, len(tenant(1)), source=0)
    # ...unless seq 1 holds what the donor holds anyway: then it is the one overwritten.
    unified.retain(1, tenant(1, length=190))
    assert unified.plan(prompt, [1, 2], busy) == Reuse(1, len(tenant(1)), source=0)


def test_distinct_tokens_counts_shared_prefixes_once() -> None:
    seqs = [[1, 2, 3], [1, 2, 4, 5], [], [7]]
    assert PrefixCache(4, shareable=True).distinct_tokens(seqs) == 3 + 2 + 1
    assert PrefixCache(4, shareable=False).distinct_tokens(seqs) == 8


@dataclass
class _Ctx:
    n_seq_max: int
    n_batch: int


def _embedder(n_seq_max: int, n_batch: int, step_tokens: int) -> Embedder:
    ctx: Any = _Ctx(n_seq_max, n_batch)
    return Embedder(model=None, ctx=ctx, step_tokens=step_tokens)  # type: ignore[arg-type]


def _queue(embedder: Embedder, *jobs: list[list[int]]) -> None:
    for inputs in jobs:
        embedder.pending.append(_job(inputs))


def _job(inputs: list[list[int]]) -> Any:
    import concurrent.futures

    from llamagrid.worker.engine.embedder import EmbedJob

    return EmbedJob(inputs, False, concurrent.futures.Future())


def test_embedding_packs_inputs_of_several_requests_into_one_decode() -> None:
    embedder = _embedder(n_seq_max=16, n_batch=512, step_tokens=100)
    _queue(embedder, [[1] * 10, [2] * 10], [[3] * 30], [[4] * 40, [5] * 40])
    group = embedder._pack()
    # 10 + 10 + 30 + 40 fit the 100-token step; the last input waits for the next decode.
    assert [(embedder.pending.index(job), i) for job, i in group] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (2, 0),
    ]
    assert [(embedder.pending.index(job), i) for job, i in embedder._pack()] == [(2, 1)]


def test_embedding_packing_respects_the_sequence_limit_and_long_inputs() -> None:
    embedder = _embedder(n_seq_max=2, n_batch=512, step_tokens=64)
    _queue(embedder, [[1], [2], [3]], [[4] * 300])
    assert len(embedder._pack()) == 2  # two sequences per decode
    assert len(embedder._pack()) == 1  # [3] alone: the long input doesn't fit with it
    assert [len(job.inputs[i]) for job, i in embedder._pack()] == [300]  # alone, over the step
    embedder._batch.close()
