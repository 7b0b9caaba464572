"""The capacity-weighted hash ring (workers/ring.py): stability, minimal movement, load, preference.

Tolerances. A shard with k of the ring's virtual nodes owns a share p whose relative standard
deviation is about sqrt((1 - p) / k) (its arcs' lengths are a Beta(k, K - k) draw), and counting
owners over n keys adds sqrt((1 - p) / (p n)). Where a test bounds a share it says which sigma its
bound is. md5 is deterministic, so for fixed names these tests cannot flake: they pass or fail
the same way on every run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.errors import CodeindexError
from workers.ring import REFERENCE_CAPACITY, EmptyRingError, HashRing, moved_fraction, virtual_nodes

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"github.com/org-{i % 97}/repo-{i}" for i in range(20_000)]
FEW_KEYS = KEYS[:300]
# Enough virtual nodes that the new shard's share deviates by <= 1/sqrt(2000) = 2.2 % (one sigma);
# with 2.2 % more from counting 20,000 keys, the 10 % bound below is >= 3 sigma.
MANY_VNODES = 2000


def equal_ring(n: int, vnodes: int = MANY_VNODES) -> HashRing:
    return HashRing({f"shard-{i}": 100 for i in range(n)}, vnodes=vnodes)


@pytest.fixture(scope="module")
def owners() -> dict[int, list[str]]:
    """Owner of every key in KEYS on the ring of n equal shards, n = 2..11."""
    rings = {n: equal_ring(n) for n in range(2, 12)}
    return {n: [ring.owner(key) for key in KEYS] for n, ring in rings.items()}


shard_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
fleets = st.dictionaries(shard_ids, st.integers(min_value=1, max_value=500), min_size=2, max_size=8)
small_vnodes = st.integers(min_value=1, max_value=60)


# --- stability -------------------------------------------------------------------------------


def test_a_lookup_is_the_same_on_a_ring_built_twice():
    shards = {"shard-a": 100, "shard-b": 50, "shard-c": 200}
    first, second = HashRing(shards), HashRing(dict(reversed(list(shards.items()))))
    assert [first.owner(k) for k in KEYS[:2000]] == [second.owner(k) for k in KEYS[:2000]]
    assert [first.preference(k) for k in FEW_KEYS] == [second.preference(k) for k in FEW_KEYS]


def test_known_owners_are_pinned():
    # Pinned: a repository must land on the same shard on every machine and every release
    # (a change of hash, point naming or weighting breaks this, and sticky placement with it).
    ring = HashRing({"shard-a": 100, "shard-b": 100, "shard-c": 200})
    assert ring.preference("github.com/acme/widgets") == ["shard-c", "shard-a", "shard-b"]
    assert ring.preference("gitlab.com/x/y") == ["shard-c", "shard-b", "shard-a"]
    assert ring.preference("repo-0") == ["shard-b", "shard-c", "shard-a"]


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_a_lookup_is_the_same_in_another_process(hash_seed: str):
    shards = {"shard-a": 100, "shard-b": 50, "shard-c": 200}
    script = (
        "import json, sys\n"
        "from workers.ring import HashRing\n"
        "shards, keys = json.load(sys.stdin)\n"
        "ring = HashRing(shards)\n"
        "print(json.dumps([ring.owner(k) for k in keys]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}  # a different str hash() in the child
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps([shards, KEYS[:1000]]),
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=True)
    ring = HashRing(shards)
    assert json.loads(done.stdout) == [ring.owner(k) for k in KEYS[:1000]]


# --- adding and removing a shard ----------------------------------------------------------------


@pytest.mark.parametrize("n", range(2, 11))
def test_adding_a_shard_moves_about_its_share_and_only_to_it(owners, n: int):
    before, after = owners[n], owners[n + 1]
    new_shard = f"shard-{n}"
    moved = [i for i in range(len(KEYS)) if before[i] != after[i]]
    assert all(after[i] == new_shard for i in moved), "a key moved between two old shards"
    fraction = len(moved) / len(KEYS)
    assert fraction == pytest.approx(1 / (n + 1), rel=0.10)


def test_moved_fraction_matches_the_owner_lists(owners):
    fraction = moved_fraction(equal_ring(4), equal_ring(5), KEYS)
    assert fraction == sum(a != b for a, b in zip(owners[4], owners[5], strict=True)) / len(KEYS)
    assert moved_fraction(equal_ring(4), equal_ring(4), KEYS) == 0.0


@pytest.mark.parametrize("n", range(2, 11))
def test_removing_a_shard_moves_only_its_keys_and_spreads_them(owners, n: int):
    full = owners[n + 1]
    removed = f"shard-{n // 2}"  # a shard from the middle, not the last one added
    ring = HashRing({f"shard-{i}": 100 for i in range(n + 1) if i != n // 2}, vnodes=MANY_VNODES)
    after = [ring.owner(key) for key in KEYS]
    moved = [i for i in range(len(KEYS)) if full[i] != after[i]]
    assert all(full[i] == removed for i in moved), "a key of a remaining shard moved"
    assert [i for i in range(len(KEYS)) if full[i] == removed] == moved
    assert len(moved) / len(KEYS) == pytest.approx(1 / (n + 1), rel=0.10)
    # Spread, not dumped on one ring neighbour: each of the n others takes about 1/n of them.
    # Each receives a share of the removed shard's 2000 arcs (sigma <= sqrt(2n/2000) = 10 %) of
    # about 1,800 keys (sigma <= 8 %), so half the fair share is more than 3.5 sigma away.
    received = Counter(after[i] for i in moved)
    assert set(received) == set(ring.shards)
    fair = len(moved) / n
    assert min(received.values()) >= fair / 2, received


@settings(max_examples=60, deadline=None)
@given(fleet=fleets, newcomer=shard_ids, capacity=st.integers(1, 500), vnodes=small_vnodes)
def test_adding_any_shard_to_any_fleet_moves_keys_only_to_it(fleet, newcomer, capacity, vnodes):
    # Monotone (Karger et al.) for any mix of capacities, because a shard's virtual nodes depend
    # on its own capacity only; a ring scaled by the mean capacity would fail this.
    fleet.pop(newcomer, None)
    before = HashRing(fleet, vnodes=vnodes)
    after = HashRing({**fleet, newcomer: capacity}, vnodes=vnodes)
    for key in FEW_KEYS:
        assert after.owner(key) in (before.owner(key), newcomer)


# --- load follows capacity ------------------------------------------------------------------------


def test_load_follows_capacity():
    capacities = {"small": 50, "medium": 100, "large": 200}
    ring = HashRing(capacities, vnodes=MANY_VNODES)
    counts = Counter(ring.owner(key) for key in KEYS)
    total = sum(capacities.values())
    for shard, capacity in capacities.items():
        share = capacity / total
        points = virtual_nodes(capacity, MANY_VNODES)
        sigma = math.sqrt((1 - share) / points + (1 - share) / (share * len(KEYS)))
        # 4 sigma: 18 % for "small" (1000 points, 1/7 of the keys), 8 % for "large"
        assert counts[shard] / len(KEYS) == pytest.approx(share, rel=4 * sigma), (shard, counts)


def test_virtual_nodes_are_proportional_to_capacity_and_at_least_one():
    assert virtual_nodes(REFERENCE_CAPACITY, 40) == 40
    assert [virtual_nodes(c, 40) for c in (50, 100, 200, 1000)] == [20, 40, 80, 400]
    assert virtual_nodes(1, 40) == 1  # 0.4 rounds up to the minimum
    assert virtual_nodes(4, 40) == 2  # 1.6 rounds half up


def test_the_default_fleet_is_even_enough():
    # Ten shards at the default capacity and vnodes: 40 points each, so a shard's share has a
    # sigma of about 15 %; 2.5x and 0.4x the fair share are far outside that (> 6 sigma).
    ring = HashRing({f"shard-{i}": 100 for i in range(10)})
    counts = Counter(ring.owner(key) for key in KEYS)
    fair = len(KEYS) / 10
    assert set(counts) == set(ring.shards)
    assert fair * 0.4 < min(counts.values()) and max(counts.values()) < fair * 2.5, counts


# --- preference ---------------------------------------------------------------------------------


def test_preference_after_removing_the_owner_starts_with_the_old_second():
    ring = equal_ring(5, vnodes=40)
    for key in FEW_KEYS:
        order = ring.preference(key)
        rest = HashRing({s: 100 for s in order[1:]}, vnodes=40)
        assert rest.owner(key) == order[1]


@settings(max_examples=60, deadline=None)
@given(fleet=fleets, vnodes=small_vnodes, key=st.text(max_size=40))
def test_preference_is_every_shard_once_from_the_owner(fleet, vnodes, key):
    ring = HashRing(fleet, vnodes=vnodes)
    order = ring.preference(key)
    assert order[0] == ring.owner(key)
    assert sorted(order) == sorted(fleet)
    # Skipping the first j shards of the list is the same as removing them from the ring.
    for j in range(1, len(order)):
        rest = HashRing({s: fleet[s] for s in order[j:]}, vnodes=vnodes)
        assert rest.preference(key) == order[j:]


# --- errors and the container protocol ---------------------------------------------------------------


def test_an_empty_ring_raises_on_lookup():
    ring = HashRing({})
    assert len(ring) == 0 and "shard-a" not in ring and ring.shards == {}
    with pytest.raises(EmptyRingError, match="no shard"):
        ring.owner("repo")
    with pytest.raises(LookupError):
        ring.preference("repo")
    with pytest.raises(CodeindexError):
        moved_fraction(ring, HashRing({"shard-a": 1}), ["repo"])


@pytest.mark.parametrize("shards", [
    {"shard-a": 0}, {"shard-a": -3}, {"shard-a": 1.5}, {"shard-a": "100"}, {"shard-a": True},
    {"": 100}, {" ": 100}, {"shard a": 100}, {"shard-a\n": 100}, {"\t": 100},
])
def test_bad_shards_are_refused(shards):
    with pytest.raises(ValueError):
        HashRing(shards)


@pytest.mark.parametrize("vnodes", [0, -1])
def test_bad_vnodes_are_refused(vnodes):
    with pytest.raises(ValueError, match="vnodes"):
        HashRing({"shard-a": 100}, vnodes=vnodes)


def test_moved_fraction_needs_keys():
    with pytest.raises(ValueError):
        moved_fraction(equal_ring(2, vnodes=40), equal_ring(3, vnodes=40), [])


def test_len_contains_and_shards_copy():
    ring = HashRing({"shard-b": 200, "shard-a": 100})
    assert len(ring) == 2 and "shard-a" in ring and "shard-c" not in ring
    assert list(ring.shards) == ["shard-a", "shard-b"]
    ring.shards["shard-c"] = 1
    assert "shard-c" not in ring
