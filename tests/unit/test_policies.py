"""The load-balancing policies: deterministic choices for given workers, loads and requests."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from llamagrid.gateway.policies import RouteRequest, create_policy
from llamagrid.gateway.policies.hashing import HashRing, hash64
from llamagrid.gateway.policies.least_load import LeastLoad
from llamagrid.gateway.policies.prefix_affinity import PrefixAffinity
from llamagrid.gateway.policies.round_robin import RoundRobin
from llamagrid.gateway.policies.session_affinity import SessionAffinity


@dataclass
class W:
    """A worker as policies see it."""

    address: str
    requests: int = 0
    slots: int = 4
    started: int = 0

    @property
    def pressure(self) -> float:
        return self.requests / self.slots


def fleet(n: int, slots: int = 1) -> list[W]:
    return [W(f"10.0.0.{i}:50051", slots=slots) for i in range(1, n + 1)]


SYSTEM = "system\x1f\x1fYou are the support bot of ACME. " * 20


def test_create_policy_knows_every_name_and_refuses_others() -> None:
    for name in ("round_robin", "least_load", "prefix_affinity", "session_affinity"):
        assert create_policy(name).name == name
    with pytest.raises(ValueError, match="unknown policy"):
        create_policy("random")


def test_round_robin_takes_turns_in_address_order_whatever_the_load() -> None:
    workers = fleet(3)
    workers[0].requests = 50
    policy = RoundRobin()
    picks = [policy.select(list(reversed(workers)), RouteRequest("m")) for _ in range(6)]
    assert [c.worker.address[-7] for c in picks] == ["1", "2", "3", "1", "2", "3"]
    assert {c.reason for c in picks} == {"round_robin:turn"}


def test_least_load_compares_requests_per_slot_then_calls_given() -> None:
    big, small = W("a:1", requests=4, slots=16), W("b:1", requests=2, slots=4)
    choice = LeastLoad().select([small, big], RouteRequest("m"))
    assert choice.worker is big and choice.reason == "least_load:lowest"
    idle = [W("a:1", started=3), W("b:1", started=1)]
    assert LeastLoad().select(idle, RouteRequest("m")).worker.address == "b:1"


def test_hash_is_stable_across_runs() -> None:
    # blake2b, not Python's salted hash(): the same key maps to the same worker in every process.
    assert hash64("a") != hash64("b")
    assert hash64("prefix") == int.from_bytes(
        __import__("hashlib").blake2b(b"prefix", digest_size=8).digest(), "big"
    )


def test_ring_moves_only_the_keys_of_a_removed_worker() -> None:
    addresses = [w.address for w in fleet(4)]
    before = HashRing(addresses)
    after = HashRing(addresses[:3])
    keys = [f"key-{i}" for i in range(400)]
    home_before = {k: next(before.walk(k)) for k in keys}
    home_after = {k: next(after.walk(k)) for k in keys}
    moved = [k for k in keys if home_before[k] != home_after[k]]
    assert moved and all(home_before[k] == addresses[3] for k in moved)
    assert sorted(before.walk("x")) == sorted(addresses)  # each address once
    spread = Counter(home_before.values())
    assert min(spread.values()) > 400 / 4 / 3  # virtual nodes spread the keys


def test_prefix_affinity_keeps_a_prefix_home_until_the_bound_then_spills() -> None:
    workers = fleet(3)
    policy = PrefixAffinity(bound=1.25)
    request = RouteRequest("m", prefix_key=SYSTEM)
    home = policy.select(workers, request)
    assert home.reason == "prefix_affinity:home"
    # The same prefix goes home every time while nobody is loaded.
    assert all(policy.select(workers, request).worker is home.worker for _ in range(5))
    # Load the home worker past the bound: capacity = ceil(1.25 * (total + 1) / 3) = 2.
    home.worker.requests = 3
    assert policy.capacity(workers, home.worker) == 2
    spilled = policy.select(workers, request)
    assert spilled.worker is not home.worker and spilled.reason == "prefix_affinity:spill"
    # The spill target is the next worker on the ring: the same one every time.
    assert policy.select(workers, request).worker is spilled.worker
    # When the home worker's load falls back under the bound, the prefix returns.
    home.worker.requests = 0
    assert policy.select(workers, request).worker is home.worker


def test_prefix_affinity_spreads_different_prefixes_and_falls_back_without_one() -> None:
    workers = fleet(4)
    policy = PrefixAffinity()
    homes = {
        policy.select(workers, RouteRequest("m", f"tenant {i} " * 30)).worker.address
        for i in range(32)
    }
    assert len(homes) == 4
    workers[2].started = -1  # least loaded by calls given
    choice = policy.select(workers, RouteRequest("m"))
    assert choice.worker is workers[2] and choice.reason == "least_load:no_prefix"


def test_prefix_affinity_under_a_hot_prefix_never_exceeds_the_bound() -> None:
    workers = fleet(4)
    policy = PrefixAffinity(bound=1.25)
    request = RouteRequest("m", SYSTEM)
    for _ in range(40):  # 40 concurrent requests for one prefix, none finishing
        choice = policy.select(workers, request)
        assert choice.worker.requests + 1 <= policy.capacity(workers, choice.worker)
        choice.worker.requests += 1
    loads = sorted(w.requests for w in workers)
    assert loads[-1] <= 1.25 * 40 / 4 + 1 and loads[0] >= 1


def test_prefix_affinity_fills_the_home_workers_free_slots_before_spilling() -> None:
    workers = fleet(2, slots=4)
    policy = PrefixAffinity(bound=1.25)
    request = RouteRequest("m", SYSTEM)
    picks = []
    for _ in range(6):
        choice = policy.select(workers, request)
        choice.worker.requests += 1
        picks.append(choice.reason)
    assert picks == ["prefix_affinity:home"] * 4 + ["prefix_affinity:spill"] * 2
    assert sorted(w.requests for w in workers) == [2, 4]


def test_prefix_affinity_places_new_prefixes_evenly_where_the_ring_alone_would_not() -> None:
    workers = fleet(2, slots=4)
    tenants = [f"tenant {i} " * 30 for i in range(32, 40)]
    # Plain consistent hashing puts these 8 prefixes 6:2 on the two workers...
    ring = HashRing([w.address for w in workers])
    assert sorted(Counter(next(ring.walk(t)) for t in tenants).values()) == [2, 6]
    # ...two choices places them 4:4, and every later request of a tenant goes to its worker.
    policy = PrefixAffinity()
    placed = {t: policy.select(workers, RouteRequest("m", t)).worker.address for t in tenants}
    assert sorted(Counter(placed.values()).values()) == [4, 4]
    assert [policy.held(w.address) for w in workers] == [4, 4]
    for t in tenants * 3:
        choice = policy.select(workers, RouteRequest("m", t))
        assert choice.worker.address == placed[t] and choice.reason == "prefix_affinity:home"


def test_prefix_affinity_places_a_prefix_only_on_its_first_two_workers_on_the_ring() -> None:
    workers = fleet(5)
    policy = PrefixAffinity()
    ring = HashRing([w.address for w in workers])
    for i in range(60):
        key = f"conversation {i} " * 20
        choice = policy.select(workers, RouteRequest("m", key))
        assert choice.worker.address in list(ring.walk(key))[:2]
    held = [policy.held(w.address) for w in workers]
    assert sum(held) == 60 and max(held) - min(held) <= 3, held


def test_prefix_affinity_forgets_idle_placements_and_replaces_a_departed_workers() -> None:
    now = [0.0]
    workers = fleet(3)
    policy = PrefixAffinity(idle_s=60, clock=lambda: now[0])
    first = policy.select(workers, RouteRequest("m", SYSTEM)).worker
    assert policy.held(first.address) == 1
    # Used again within the window: still placed there.
    now[0] = 50.0
    assert policy.select(workers, RouteRequest("m", SYSTEM)).worker is first
    # Idle past the window (counted from the last use): the placement is forgotten.
    now[0] = 111.0
    other = policy.select(workers, RouteRequest("m", "another prompt " * 40)).worker
    assert [policy.held(w.address) for w in workers] == [int(w is other) for w in workers]
    # A prefix whose worker left the pool moves to one of the others, and is counted there.
    again = policy.select(workers, RouteRequest("m", SYSTEM)).worker
    rest = [w for w in workers if w is not again]
    moved = policy.select(rest, RouteRequest("m", SYSTEM)).worker
    assert moved is not again and policy.held(again.address) == 0 and policy.held(moved.address)
    # It stays on its new worker when the old one returns.
    assert policy.select(workers, RouteRequest("m", SYSTEM)).worker is moved


def test_prefix_affinity_refuses_a_bound_below_one() -> None:
    with pytest.raises(ValueError):
        PrefixAffinity(bound=0.5)


def test_session_affinity_pins_sessions_and_moves_only_a_lost_workers_sessions() -> None:
    workers = fleet(3)
    policy = SessionAffinity()
    sessions = [f"user-{i}" for i in range(60)]
    pinned = {s: policy.select(workers, RouteRequest("m", session_key=s)).worker for s in sessions}
    assert len({w.address for w in pinned.values()}) == 3
    workers[0].requests = 99  # load does not move a session
    assert all(
        policy.select(workers, RouteRequest("m", session_key=s)).worker is pinned[s]
        for s in sessions
    )
    survivors = workers[1:]
    for s in sessions:
        now = policy.select(survivors, RouteRequest("m", session_key=s)).worker
        if pinned[s] is not workers[0]:
            assert now is pinned[s]
    # Back when the worker is healthy again.
    assert all(
        policy.select(workers, RouteRequest("m", session_key=s)).worker is pinned[s]
        for s in sessions
    )


def test_session_affinity_without_a_session_uses_the_least_loaded() -> None:
    workers = fleet(2)
    workers[0].requests = 2
    choice = SessionAffinity().select(workers, RouteRequest("m", prefix_key="x"))
    assert choice.worker is workers[1] and choice.reason == "least_load:no_session"
