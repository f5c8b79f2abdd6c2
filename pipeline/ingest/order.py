"""The emission order of one reader: a pure function of its `ReaderPlan`, known before reading.

A reader emits its planned samples (its slices, in plan order) through a seeded shuffle
window, like webdataset's shuffle buffer but simulated on sample *indices*: the window
holds ``window`` positions; each new sample read replaces a random slot whose occupant is
emitted. Because the order is computed up front, samples mix across shard boundaries within
a batch, and a resumed reader knows exactly which samples it still needs (``order[c:]``).

A reader that runs short (corrupt samples were skipped) continues on "repeat rounds":
round ``k >= 1`` reads ``plan.repeat_order(k - 1)`` (the same slices, reshuffled) through
the same kind of window. Position ``p`` of the endless emission sequence is round
``p // L``, offset ``p % L``, where ``L = plan.samples``; rounds >= 1 are repeats.
"""

from __future__ import annotations

import numpy as np

from pipeline.shards.plan import ReaderPlan, ShardSlice

_TAG_WINDOW = 0x5749
_TAG_AUGMENT = 0x4155

SampleId = tuple[str, int]  # (shard key, member index in the tar)


def window_shuffle(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Indices ``0..n-1`` in the order a shuffle buffer of ``window`` slots emits them.

    Returns an int64 array of shape (n,), a permutation of ``range(n)``. The k-th emitted
    item always has an index below ``k + window``: a reader that reads samples in index
    order never holds more than ``window`` samples that are read but not yet emitted.
    """
    if n < 0 or window < 1:
        raise ValueError(f"window_shuffle: need n >= 0 and window >= 1, got n={n}, "
                         f"window={window}")
    out = np.empty(n, dtype=np.int64)
    slots = list(range(min(window, n)))
    draws = rng.integers(0, window, size=max(0, n - window)).tolist()
    k = 0
    for i, j in zip(range(window, n), draws):
        out[k] = slots[j]
        slots[j] = i
        k += 1
    rest = np.asarray(slots, dtype=np.int64)
    rng.shuffle(rest)
    out[k:] = rest
    return out


def round_slices(plan: ReaderPlan, round_: int) -> list[ShardSlice]:
    """The slices read in round ``round_`` (0: the plan's order; k >= 1: repeat pass k-1)."""
    if round_ < 0:
        raise ValueError(f"round must be >= 0, got {round_}")
    return list(plan.slices) if round_ == 0 else plan.repeat_order(round_ - 1)


def round_order(plan: ReaderPlan, round_: int, window: int) -> list[SampleId]:
    """The (shard, member) ids in the order round ``round_`` emits them; length plan.samples.

    Seeded by (seed, epoch, rank, reader, round) of the plan: identical on every resume.
    """
    ids: list[SampleId] = [(s.shard, m) for s in round_slices(plan, round_)
                           for m in range(s.start, s.stop)]
    rng = np.random.default_rng(
        [_TAG_WINDOW, plan.seed, plan.epoch, plan.rank, plan.reader, round_])
    return [ids[i] for i in window_shuffle(len(ids), window, rng).tolist()]


def augment_rng(plan: ReaderPlan, position: int) -> np.random.Generator:
    """The augmentation RNG of emission position ``position``: the same on every resume."""
    return np.random.default_rng(
        [_TAG_AUGMENT, plan.seed, plan.epoch, plan.rank, plan.reader, position])
