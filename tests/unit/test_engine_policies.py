"""Engine policies without a model: prefix-cache placement and embedding packing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.embedder import Embedder
from worker.prefix_cache import PrefixCache, Reuse, common_prefix


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([1, 2, 3], [9]) == 0
    assert common_prefix([], [1]) == 0
    long = list(range(1000))
    assert common_prefix(long, [*long[:637], -1, *long[638:]]) == 637


def test_placement_prefers_the_longest_cached_prefix_then_lru() -> None:
    cache = PrefixCache(3, shareable=False)
    cache.retain(0, [1, 2, 3, 4])
    cache.retain(1, [1, 2, 9])
    cache.retain(2, [7, 7])
    assert cache.plan([1, 2, 3, 4, 5], [0, 1, 2], {}) == Reuse(0, 4)
    # The whole prompt is cached: one token is still decoded, for its logits.
    assert cache.plan([1, 2, 3, 4], [0, 1, 2], {}) == Reuse(0, 3)
    # Nothing shared: the least recently used sequence is overwritten.
    assert cache.plan([5, 5], [0, 1, 2], {}) == Reuse(0, 0)
    cache.take(0)
    assert cache.plan([5, 5], [0, 1, 2], {}) == Reuse(0, 0)  # an empty one goes first


def test_a_running_sequence_donates_its_prefix_only_when_cells_are_shareable() -> None:
    busy = {0: [1, 2, 3, 4, 5, 6]}
    separate = PrefixCache(3, shareable=False)
    separate.retain(1, [1, 2])
    assert separate.plan([1, 2, 3, 4, 9], [1, 2], busy) == Reuse(1, 2)
    unified = PrefixCache(3, shareable=True)
    unified.retain(2, [8])
    unified.retain(1, [1, 2])
    # Copied into the least recently used idle sequence (2), so seq 1 keeps its cache.
    assert unified.plan([1, 2, 3, 4, 9], [1, 2], busy) == Reuse(2, 4, source=0)


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

    from worker.embedder import EmbedJob

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
