"""The epoch plan: which samples each rank and each of its readers serves, as pure arithmetic.

`plan_epoch` is a pure function of (shard counts, seed, epoch, world size, per-rank batch,
readers per rank). Every rank gets exactly ``steps_per_epoch * per_rank_batch`` samples, so
every rank runs the same number of full batches: DDP never waits on a rank that ran out, and
MoCo's queue never sees a short batch.

How the samples are laid out (one epoch):

1. The shards are sorted by key (so the manifest's order does not matter) and shuffled with
   ``(seed, epoch)``; laid end to end they form one sequence of ``total`` samples, each shard's
   members in tar order.
2. The sequence is rotated by a random offset (also from ``(seed, epoch)``): the
   ``total - world_size * per_rank_total`` samples left over after the last full global batch
   are dropped from a different place every epoch, not always from the same shard's tail.
3. Rank ``r`` gets the contiguous range ``[r * per_rank_total, (r + 1) * per_rank_total)`` of
   the rotated sequence, where ``per_rank_total = steps_per_epoch * per_rank_batch``.
4. Step ``i`` of a rank is served by its reader ``i % readers_per_rank``; reader ``j`` therefore
   produces ``len(range(j, steps_per_epoch, readers_per_rank))`` batches and gets exactly that
   many batches' worth of contiguous samples of its rank's range (reader 0 first).

Ranges are expressed as `ShardSlice` (shard key, member indices ``[start, stop)``). A shard
may be split between readers (or ranks); a reader that starts mid-shard skips the first
``start`` members of the tar, so the extra bytes streamed per epoch are bounded by one shard
per reader boundary. Within an epoch no sample is planned twice. A reader that loses samples
to corruption continues on `ReaderPlan.repeat_order`, a deterministic reshuffle of its own
slices, and reports those samples as repeats.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.shards.manifest import paused_gc

# Stream tags keep the random streams of the shard shuffle, the rotation and the repeat
# shuffle independent of each other even for equal (seed, epoch).
_TAG_ORDER = 0x5A4D
_TAG_REPEAT = 0x4E50


@dataclass(frozen=True)
class ShardSlice:
    """Members ``[start, stop)`` (indices in tar order) of the shard ``shard`` (manifest key)."""

    shard: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class ReaderPlan:
    """What one reader of one rank serves this epoch.

    ``slices`` hold exactly ``batches * per_rank_batch`` samples, in reading order. The
    identifying fields (seed, epoch, rank, reader) seed `repeat_order`.
    """

    slices: list[ShardSlice]
    batches: int
    rank: int = 0
    reader: int = 0
    seed: int = 0
    epoch: int = 0

    @property
    def samples(self) -> int:
        """Number of samples planned for this reader (= batches * per_rank_batch)."""
        return sum(len(s) for s in self.slices)

    def repeat_order(self, round: int) -> list[ShardSlice]:
        """The reader's own slices in a deterministic reshuffled order, for repeat pass ``round``.

        A reader that ran short (corrupt samples were skipped) keeps producing batches from
        ``repeat_order(0)``, then ``repeat_order(1)`` ..., and counts those samples as repeats.
        Seeded by (seed, epoch, rank, reader, round): the same on every resume.
        """
        if round < 0:
            raise ValueError(f"repeat round must be >= 0, got {round}")
        if not self.slices:
            return []
        rng = np.random.default_rng(
            [_TAG_REPEAT, self.seed, self.epoch, self.rank, self.reader, round]
        )
        return [self.slices[i] for i in rng.permutation(len(self.slices))]


@dataclass
class RankPlan:
    """One rank's readers; step ``i`` is served by ``readers[i % len(readers)]``."""

    rank: int
    readers: list[ReaderPlan]

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.readers)

    def step_source(self, step: int) -> tuple[int, int]:
        """(reader index, batch index within that reader) that serves ``step`` of the epoch."""
        n = len(self.readers)
        return step % n, step // n


@dataclass
class EpochPlan:
    """The whole world's plan for one epoch. ``ranks[r]`` is rank ``r``'s plan."""

    epoch: int
    seed: int
    world_size: int
    per_rank_batch: int
    steps_per_epoch: int
    ranks: list[RankPlan]
    readers_per_rank: int = 1
    total_samples: int = 0
    dropped_samples: int = 0
    shard_order: list[str] = field(default_factory=list)  # empty in a one-rank plan
    shards: int = 0  # shards in the manifest (empty ones included)

    def rank(self, r: int) -> RankPlan:
        """Rank ``r``'s plan (a one-rank plan, see `plan_epoch(only_rank=)`, holds only its
        own)."""
        for plan in self.ranks:
            if plan.rank == r:
                return plan
        raise KeyError(f"this epoch plan holds no rank {r} (ranks "
                       f"{[p.rank for p in self.ranks]})")

    def summary(self) -> dict[str, Any]:
        """A small JSON-able description (for logs and MLflow params)."""
        reader_samples = [r.samples for rank in self.ranks for r in rank.readers]
        reader_slices = [len(r.slices) for rank in self.ranks for r in rank.readers]
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "world_size": self.world_size,
            "per_rank_batch": self.per_rank_batch,
            "readers_per_rank": self.readers_per_rank,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.world_size * self.per_rank_batch,
            "total_samples": self.total_samples,
            "used_samples": self.total_samples - self.dropped_samples,
            "dropped_samples": self.dropped_samples,
            "shards": self.shards or len(self.shard_order),
            "samples_per_rank": self.steps_per_epoch * self.per_rank_batch,
            "reader_samples_min": min(reader_samples),
            "reader_samples_max": max(reader_samples),
            "reader_slices_max": max(reader_slices),
        }


def _sorted_columns(shards: Sequence[tuple[str, int]]) -> tuple[list[str], list[int]]:
    """Validated ``(keys, counts)`` sorted by key. Fast path for a million shards: whole-column
    checks, and no sort (nor duplicate set) when the keys already ascend strictly, as the
    manifests `shards write` and `shards index` produce do. Bad input: ValueError naming it."""
    try:
        keys = [k for k, _ in shards]
        counts = [n for _, n in shards]
    except (TypeError, ValueError):
        keys, counts = [], [-1]
    if not (all(type(k) is str and k for k in keys)
            and all(type(n) is int and n >= 0 for n in counts)):
        _validate_items(shards)  # raises with the precise message (or accepts numpy ints)
        keys, counts = [str(k) for k, _ in shards], [int(n) for _, n in shards]
    if all(a < b for a, b in itertools.pairwise(keys)):
        return keys, counts
    if len(set(keys)) != len(keys):
        _validate_items(shards)  # raises: duplicate key
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return [keys[i] for i in order], [counts[i] for i in order]


def _validate_args(seed: int, epoch: int, world_size: int, per_rank_batch: int,
                   readers_per_rank: int) -> None:
    for name, value, low in (
        ("seed", seed, 0),
        ("epoch", epoch, 0),
        ("world_size", world_size, 1),
        ("per_rank_batch", per_rank_batch, 1),
        ("readers_per_rank", readers_per_rank, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"plan_epoch: {name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"plan_epoch: {name} must be >= {low}, got {value}")


def _validate_items(shards: Sequence[tuple[str, int]]) -> None:
    seen: set[str] = set()
    for item in shards:
        if len(item) != 2:
            raise ValueError(f"plan_epoch: shard entry must be (key, samples), got {item!r}")
        key, count = item
        if not isinstance(key, str) or not key:
            raise ValueError(f"plan_epoch: shard key must be a non-empty str, got {key!r}")
        if key in seen:
            raise ValueError(f"plan_epoch: duplicate shard key {key!r}")
        seen.add(key)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"plan_epoch: shard {key!r} has an invalid sample count {count!r}")


class _Laid:
    """The shuffled shards laid end to end (empty shards left out), as numpy arrays;
    `cut` returns the slices covering positions [a, b) without building the whole sequence."""

    def __init__(self, keys: list[str], counts: np.ndarray, order: np.ndarray) -> None:
        self.keys = keys
        self.index = order[counts[order] > 0]  # shard index of each segment
        self.ends = np.cumsum(counts[self.index])
        self.starts = self.ends - counts[self.index]

    def cut(self, a: int, b: int) -> list[ShardSlice]:
        if a >= b:
            return []
        first = int(np.searchsorted(self.ends, a, side="right"))
        last = int(np.searchsorted(self.ends, b - 1, side="right")) + 1
        keys = self.keys  # one .tolist() per range, not a numpy scalar per segment
        return [ShardSlice(keys[i], max(a, start) - start, min(b, end) - start)
                for i, start, end in zip(self.index[first:last].tolist(),
                                         self.starts[first:last].tolist(),
                                         self.ends[first:last].tolist())]


def _rotated_cut(laid: _Laid, offset: int, total: int, a: int, b: int) -> list[ShardSlice]:
    """Positions [a, b) of the sequence rotated to start at `offset` (a split at the wrap
    point gives two slices, as the rotated segments are)."""
    a, b = a + offset, b + offset
    if b <= total:
        return laid.cut(a, b)
    if a >= total:
        return laid.cut(a - total, b - total)
    return laid.cut(a, total) + laid.cut(0, b - total)


def plan_epoch(
    shards: Sequence[tuple[str, int]],
    *,
    seed: int,
    epoch: int,
    world_size: int,
    per_rank_batch: int,
    readers_per_rank: int = 1,
    only_rank: int | None = None,
) -> EpochPlan:
    """Plan one epoch for every rank and reader (see the module docstring for the layout).
    With ``only_rank``, the plan holds that rank's part only (what a train worker needs: the
    same slices as in the whole plan, without the other ranks' or the shard order).

    Args:
        shards: ``[(shard key, sample count)]``, e.g. ``Manifest.shard_counts()``; any order.
        seed, epoch: the shard order and the dropped remainder change with both.
        world_size: number of train ranks; per_rank_batch: samples per step per rank.
        readers_per_rank: readers per rank; reader ``j`` serves steps ``i % readers == j``.

    Raises:
        ValueError: bad arguments, or a corpus smaller than one global batch.
    """
    with paused_gc():  # ~1M slice objects at a million shards
        return _plan_epoch(shards, seed, epoch, world_size, per_rank_batch, readers_per_rank,
                           only_rank)


def _plan_epoch(shards: Sequence[tuple[str, int]], seed: int, epoch: int, world_size: int,
                per_rank_batch: int, readers_per_rank: int,
                only_rank: int | None = None) -> EpochPlan:
    _validate_args(seed, epoch, world_size, per_rank_batch, readers_per_rank)
    if only_rank is not None and not 0 <= only_rank < world_size:
        raise ValueError(f"plan_epoch: only_rank={only_rank} is not a rank of {world_size}")
    keys, count_list = _sorted_columns(shards)
    counts = np.array(count_list, dtype=np.int64)
    total = int(counts.sum())
    global_batch = world_size * per_rank_batch
    steps = total // global_batch
    if steps == 0:
        raise ValueError(
            f"plan_epoch: the corpus has {total} samples in {len(keys)} shards, fewer than one "
            f"global batch ({world_size} ranks x {per_rank_batch} = {global_batch}); "
            "use more data, fewer ranks or a smaller per-rank batch"
        )
    per_rank_total = steps * per_rank_batch
    used = world_size * per_rank_total

    rng = np.random.default_rng([_TAG_ORDER, seed, epoch])
    order = rng.permutation(len(keys))
    offset = int(rng.integers(total))  # where the rotated sequence starts
    laid = _Laid(keys, counts, order)

    ranks: list[RankPlan] = []
    for r in range(world_size) if only_rank is None else [only_rank]:
        pos = r * per_rank_total
        readers: list[ReaderPlan] = []
        for j in range(readers_per_rank):
            batches = len(range(j, steps, readers_per_rank))
            n = batches * per_rank_batch
            readers.append(
                ReaderPlan(_rotated_cut(laid, offset, total, pos, pos + n), batches, r, j,
                           int(seed), int(epoch))
            )
            pos += n
        ranks.append(RankPlan(r, readers))

    return EpochPlan(
        epoch=int(epoch),
        seed=int(seed),
        world_size=int(world_size),
        per_rank_batch=int(per_rank_batch),
        steps_per_epoch=steps,
        ranks=ranks,
        readers_per_rank=int(readers_per_rank),
        total_samples=total,
        dropped_samples=total - used,
        shard_order=[keys[i] for i in order.tolist()] if only_rank is None else [],
        shards=len(keys),
    )
