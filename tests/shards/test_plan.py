"""Epoch plan: simulated worlds of 1..512 ranks over very uneven manifests (pure, fast)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from pipeline.shards.plan import EpochPlan, ShardSlice, plan_epoch

pytestmark = pytest.mark.unit


def uneven_manifest(n_shards: int, seed: int) -> list[tuple[str, int]]:
    """Very uneven shards: mostly tiny, some mid-sized, a few huge, a few empty."""
    rng = np.random.default_rng(seed)
    kinds = rng.random(n_shards)
    counts = rng.integers(1, 5001, size=n_shards)  # mid-sized
    counts = np.where(kinds < 0.5, rng.integers(1, 8, size=n_shards), counts)  # tiny
    counts = np.where(kinds > 0.95, rng.integers(20_000, 60_000, size=n_shards), counts)  # huge
    counts = np.where((kinds > 0.48) & (kinds < 0.5), 0, counts)  # empty
    return [(f"shard-{i:06d}.tar", int(c)) for i, c in enumerate(counts)]


def used_positions(plan: EpochPlan) -> dict[str, list[tuple[int, int]]]:
    """Every planned slice per shard, sorted by start."""
    per_shard: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for rank in plan.ranks:
        for reader in rank.readers:
            for s in reader.slices:
                per_shard[s.shard].append((s.start, s.stop))
    return {k: sorted(v) for k, v in per_shard.items()}


def check_plan(plan: EpochPlan, shards: list[tuple[str, int]], world: int, batch: int,
               readers: int) -> None:
    counts = dict(shards)
    total = sum(counts.values())
    steps = total // (world * batch)
    assert plan.steps_per_epoch == steps
    assert len(plan.ranks) == world
    for r, rank in enumerate(plan.ranks):
        assert rank.rank == r
        assert len(rank.readers) == readers
        # the readers' batches add up to the rank's steps, and reader j serves i % R == j
        assert sum(rd.batches for rd in rank.readers) == steps
        for j, rd in enumerate(rank.readers):
            assert rd.batches == len(range(j, steps, readers))
            assert rd.samples == rd.batches * batch
            for s in rd.slices:
                assert 0 <= s.start < s.stop <= counts[s.shard], s
        # identical work on every rank: exact balance
        assert rank.samples == steps * batch
    # coverage: no sample planned twice; the union is all but the dropped remainder
    covered = 0
    for key, ranges in used_positions(plan).items():
        for (a0, b0), (a1, _) in zip(ranges, ranges[1:]):
            assert b0 <= a1, f"{key}: overlapping slices {(a0, b0)} and {a1}"
        covered += sum(b - a for a, b in ranges)
    assert covered == world * steps * batch == total - plan.dropped_samples
    assert 0 <= plan.dropped_samples < world * batch


WORLDS = [1, 2, 3, 7, 8, 16, 64, 128, 512]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("readers", [1, 2, 3, 4])
def test_step_parity_coverage_balance(world: int, readers: int) -> None:
    shards = uneven_manifest(300, seed=world * 10 + readers)
    for batch in (1, 7, 32):
        if sum(n for _, n in shards) < world * batch:
            continue
        for epoch in (0, 3):
            plan = plan_epoch(shards, seed=11, epoch=epoch, world_size=world,
                              per_rank_batch=batch, readers_per_rank=readers)
            check_plan(plan, shards, world, batch, readers)


@pytest.mark.parametrize("world", [16, 100, 512])
def test_fewer_shards_than_ranks(world: int) -> None:
    shards = [("shard-000000.tar", 40_000), ("shard-000001.tar", 3), ("shard-000002.tar", 9_000)]
    plan = plan_epoch(shards, seed=0, epoch=1, world_size=world, per_rank_batch=8,
                      readers_per_rank=2)
    check_plan(plan, shards, world, 8, 2)
    assert plan.steps_per_epoch == 49_003 // (world * 8)


def test_more_readers_than_steps_gives_idle_readers() -> None:
    shards = [("a", 10), ("b", 7)]
    plan = plan_epoch(shards, seed=0, epoch=0, world_size=2, per_rank_batch=4, readers_per_rank=4)
    assert plan.steps_per_epoch == 2
    for rank in plan.ranks:
        assert [rd.batches for rd in rank.readers] == [1, 1, 0, 0]
        assert rank.readers[3].slices == [] and rank.readers[3].repeat_order(0) == []
    check_plan(plan, shards, 2, 4, 4)


def test_determinism_and_manifest_order_independence() -> None:
    shards = uneven_manifest(200, seed=5)
    kwargs = dict(seed=3, epoch=2, world_size=24, per_rank_batch=16, readers_per_rank=3)
    a = plan_epoch(shards, **kwargs)
    b = plan_epoch(list(shards), **kwargs)
    c = plan_epoch(list(reversed(shards)), **kwargs)
    assert a == b == c
    assert a.summary() == c.summary()


def test_order_changes_with_epoch_and_seed() -> None:
    shards = uneven_manifest(100, seed=9)
    kw = dict(world_size=4, per_rank_batch=8, readers_per_rank=2)
    orders = {tuple(plan_epoch(shards, seed=1, epoch=e, **kw).shard_order) for e in range(6)}
    assert len(orders) == 6
    other_seed = plan_epoch(shards, seed=2, epoch=0, **kw).shard_order
    assert tuple(other_seed) not in {tuple(plan_epoch(shards, seed=1, epoch=0, **kw).shard_order)}
    # the first rank's first slice (what is read first) moves around too
    firsts = {plan_epoch(shards, seed=1, epoch=e, **kw).ranks[0].readers[0].slices[0]
              for e in range(6)}
    assert len(firsts) == 6


def test_dropped_remainder_moves_between_epochs() -> None:
    # one huge shard: shuffling the shard order alone would always drop its tail
    shards = [("big", 10_007), ("small", 5)]
    dropped_sets = []
    for epoch in range(5):
        plan = plan_epoch(shards, seed=0, epoch=epoch, world_size=4, per_rank_batch=10)
        assert plan.dropped_samples == 10_012 - 4 * 250 * 10
        used = {(k, i) for k, rs in used_positions(plan).items() for a, b in rs
                for i in range(a, b)}
        all_ = {(k, i) for k, n in shards for i in range(n)}
        dropped_sets.append(frozenset(all_ - used))
        assert len(dropped_sets[-1]) == plan.dropped_samples
    assert len(set(dropped_sets)) == 5


def test_repeat_order_is_a_deterministic_reshuffle() -> None:
    shards = [(f"s{i}", 5 + i) for i in range(40)]
    plan = plan_epoch(shards, seed=4, epoch=1, world_size=1, per_rank_batch=6, readers_per_rank=2)
    reader = plan.ranks[0].readers[1]
    assert len(reader.slices) > 5
    r0 = reader.repeat_order(0)
    assert sorted(r0, key=lambda s: (s.shard, s.start)) == sorted(
        reader.slices, key=lambda s: (s.shard, s.start))
    again = plan_epoch(shards, seed=4, epoch=1, world_size=1, per_rank_batch=6,
                       readers_per_rank=2).ranks[0].readers[1]
    assert again.repeat_order(0) == r0
    assert reader.repeat_order(1) != r0
    assert plan.ranks[0].readers[0].repeat_order(0) != r0
    with pytest.raises(ValueError, match="round"):
        reader.repeat_order(-1)


def test_step_source_maps_steps_to_readers() -> None:
    plan = plan_epoch([("a", 100)], seed=0, epoch=0, world_size=1, per_rank_batch=3,
                      readers_per_rank=3)
    rank = plan.ranks[0]
    served: dict[int, list[int]] = defaultdict(list)
    for step in range(plan.steps_per_epoch):
        reader, idx = rank.step_source(step)
        served[reader].append(idx)
    for j, rd in enumerate(rank.readers):
        assert served[j] == list(range(rd.batches))


def test_summary_is_json_able() -> None:
    import json

    plan = plan_epoch(uneven_manifest(50, 1), seed=0, epoch=0, world_size=8, per_rank_batch=4,
                      readers_per_rank=2)
    s = json.loads(json.dumps(plan.summary()))
    assert s["steps_per_epoch"] == plan.steps_per_epoch
    assert s["used_samples"] + s["dropped_samples"] == s["total_samples"]
    assert s["reader_samples_max"] - s["reader_samples_min"] <= 4


@pytest.mark.parametrize(
    ("shards", "kwargs", "match"),
    [
        ([("a", 3)], dict(world_size=2, per_rank_batch=2), "fewer than one global batch"),
        ([], dict(world_size=1, per_rank_batch=1), "fewer than one global batch"),
        ([("a", 3)], dict(world_size=0, per_rank_batch=1), "world_size"),
        ([("a", 3)], dict(world_size=1, per_rank_batch=0), "per_rank_batch"),
        ([("a", 3)], dict(world_size=1, per_rank_batch=1, readers_per_rank=0), "readers_per_rank"),
        ([("a", 3), ("a", 4)], dict(world_size=1, per_rank_batch=1), "duplicate shard key 'a'"),
        ([("a", -1)], dict(world_size=1, per_rank_batch=1), "'a'.*invalid sample count"),
        ([("a", 3)], dict(world_size=1, per_rank_batch=1, seed=-1), "seed"),
        ([("a", 3)], dict(world_size=1, per_rank_batch=1, epoch=-2), "epoch"),
        ([("a", 3)], dict(world_size=1.5, per_rank_batch=1), "world_size must be an int"),
    ],
)
def test_invalid_inputs_raise(shards, kwargs, match) -> None:
    kwargs = {"seed": 0, "epoch": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        plan_epoch(shards, **kwargs)


def test_shard_slice_len() -> None:
    assert len(ShardSlice("x", 3, 10)) == 7


def _naive_plan(shards: list[tuple[str, int]], seed: int, epoch: int, world: int, batch: int,
                readers: int) -> list[list[tuple[str, int, int]]]:
    """Reference: every sample as (shard, member) in a list, rotated, cut, runs merged."""
    from pipeline.shards.plan import _TAG_ORDER

    items = sorted(shards)
    rng = np.random.default_rng([_TAG_ORDER, seed, epoch])
    order = [items[i] for i in rng.permutation(len(items))]
    seq = [(k, m) for k, n in order for m in range(n)]
    offset = int(rng.integers(len(seq)))
    seq = seq[offset:] + seq[:offset]
    steps = len(seq) // (world * batch)
    out, pos = [], 0
    for _ in range(world):
        for j in range(readers):
            n = len(range(j, steps, readers)) * batch
            runs: list[list] = []
            for k, m in seq[pos:pos + n]:
                if runs and runs[-1][0] == k and runs[-1][2] == m:
                    runs[-1][2] = m + 1
                else:
                    runs.append([k, m, m + 1])
            out.append([tuple(r) for r in runs])
            pos += n
    return out


@pytest.mark.parametrize("trial", range(40))
def test_plan_matches_a_naive_reference(trial: int) -> None:
    rng = np.random.default_rng(trial)
    n = int(rng.integers(1, 12))
    shards = [(f"s{i:03d}.tar", int(c)) for i, c in enumerate(rng.choice([0, 1, 3, 7, 20], n))]
    world, batch, readers = (int(rng.integers(1, 4)), int(rng.integers(1, 5)),
                             int(rng.integers(1, 4)))
    if sum(c for _, c in shards) < world * batch:
        return
    plan = plan_epoch(shards, seed=trial % 3, epoch=trial % 5, world_size=world,
                      per_rank_batch=batch, readers_per_rank=readers)
    got = [[(s.shard, s.start, s.stop) for s in r.slices] for rank in plan.ranks
           for r in rank.readers]
    assert got == _naive_plan(shards, trial % 3, trial % 5, world, batch, readers)


@pytest.mark.parametrize("world,readers", [(1, 1), (3, 2), (8, 4)])
def test_a_one_rank_plan_is_that_rank_of_the_whole_plan(world: int, readers: int) -> None:
    """What a train worker plans (`only_rank`): the very slices of the whole plan, and
    nothing of the other ranks or the shard order."""
    shards = [(f"s{i:03d}", 7 + (i * 5) % 11) for i in range(40)]
    whole = plan_epoch(shards, seed=4, epoch=2, world_size=world, per_rank_batch=3,
                       readers_per_rank=readers)
    for r in range(world):
        one = plan_epoch(shards, seed=4, epoch=2, world_size=world, per_rank_batch=3,
                         readers_per_rank=readers, only_rank=r)
        assert [p.rank for p in one.ranks] == [r] and one.rank(r) == whole.rank(r)
        assert one.steps_per_epoch == whole.steps_per_epoch and one.shard_order == []
        assert one.summary()["shards"] == whole.summary()["shards"] == 40
        with pytest.raises(KeyError, match="holds no rank"):
            one.rank((r + 1) % world if world > 1 else 5)
    with pytest.raises(ValueError, match="only_rank=8"):
        plan_epoch(shards, seed=4, epoch=2, world_size=8, per_rank_batch=3, only_rank=8)
