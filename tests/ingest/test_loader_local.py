"""Reader + loader logic on local-folder datasets with in-process readers (no servers)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan
from pipeline.ingest.order import window_shuffle
from pipeline.ingest.reader import CorruptDataError
from tests.ingest.shardkit import shard_bytes, write_local

pytestmark = pytest.mark.unit


def _loader(folder: str, shards: list[tuple[str, int]], *, rank: int = 0, world: int = 1,
            batch: int = 8, readers: int = 2, window: int = 64, max_corrupt: float = 0.01,
            in_flight: int = 3) -> Loader:
    return Loader(DataConfig(image_size=16, train=folder),
                  IngestConfig(readers_per_worker=readers, shuffle_window=window,
                               batches_in_flight=in_flight, read_ahead_mb=1,
                               max_corrupt_fraction=max_corrupt),
                  AugmentConfig(), LoaderPlan(shards, rank, world, batch, seed=7),
                  storage=StorageConfig(), use_ray=False)


def _run(loader: Loader, epoch: int = 0) -> list[dict[str, Any]]:
    return list(loader.epoch(epoch))


def test_window_shuffle_is_a_bounded_deterministic_permutation() -> None:
    for n, window in [(0, 4), (5, 10), (500, 16), (257, 1)]:
        a = window_shuffle(n, window, np.random.default_rng(3))
        b = window_shuffle(n, window, np.random.default_rng(3))
        assert sorted(a.tolist()) == list(range(n)) and np.array_equal(a, b)
        assert all(idx < k + window for k, idx in enumerate(a.tolist()))
    assert window == 1 and a.tolist() == list(range(257))  # a 1-slot window keeps the order
    mixed = window_shuffle(500, 16, np.random.default_rng(3))
    assert not np.array_equal(mixed, np.arange(500))


def test_resume_reproduces_the_remaining_batches_exactly(tmp_path: Any) -> None:
    folder = str(tmp_path)
    shards = write_local(folder, [37, 50, 9, 64])
    # one corrupt sample, so resuming needs the saved cursors, not just step * batch
    with open(os.path.join(folder, "shard-000001.tar"), "wb") as f:
        f.write(shard_bytes(1, 50, bad_jpeg=frozenset({20})))
    full_loader = _loader(folder, shards, max_corrupt=0.1)
    full = _run(full_loader)
    assert len(full) == full_loader.steps_per_epoch == 160 // 8
    assert full_loader.metrics()["corrupt"] == 1
    # the epoch's consumption: every planned sample but the corrupt one (its stand-in is a
    # repeat, handed out but not counted)
    full_samples = full_loader.state_dict()["samples"]
    assert full_samples == 160 - 1 == full_loader.metrics()["samples"] - 1
    for stop in (1, 7, 19):
        first = _loader(folder, shards, max_corrupt=0.1)
        it = first.epoch(0)
        head = [next(it) for _ in range(stop)]
        state = first.state_dict()
        assert state["step"] == stop and state["epoch"] == 0
        first.close()
        again = _loader(folder, shards, max_corrupt=0.1)
        again.load_state_dict(state)
        rest = _run(again)
        assert len(head) + len(rest) == len(full)
        for a, b in zip(head + rest, full):
            assert a["keys"] == b["keys"] and a["step"] == b["step"]
            assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])
        assert state["samples"] == sum(len(b["keys"]) - b["repeats"] for b in head)
        assert again.state_dict()["samples"] == full_samples  # counted whole across the resume
    # the next epoch reshuffles: a different order of the same samples
    epoch1 = _run(full_loader, 1)
    assert [b["keys"] for b in epoch1] != [b["keys"] for b in full]


def test_two_ranks_with_uneven_shards_get_equal_full_batches(tmp_path: Any) -> None:
    shards = write_local(str(tmp_path), [3, 120, 5, 41, 1, 77, 2])
    seen: list[str] = []
    steps = []
    for rank in range(2):
        batches = _run(_loader(str(tmp_path), shards, rank=rank, world=2, batch=6, readers=2))
        steps.append(len(batches))
        assert all(b["view1"].shape == (6, 3, 16, 16) and len(b["keys"]) == 6 for b in batches)
        seen += [k for b in batches for k in b["keys"]]
    assert steps[0] == steps[1] == 249 // 12
    assert len(seen) == len(set(seen)) == steps[0] * 12  # no sample twice within the epoch


def test_more_readers_than_steps(tmp_path: Any) -> None:
    shards = write_local(str(tmp_path), [10, 9])
    loader = _loader(str(tmp_path), shards, readers=3)  # steps 2: reader 2 gets nothing
    assert [len(b["keys"]) for b in _run(loader)] == [8, 8]


def test_batches_mix_samples_across_shards(tmp_path: Any) -> None:
    shards = write_local(str(tmp_path), [16, 16, 16, 16])
    batches = _run(_loader(str(tmp_path), shards, readers=1, window=32))
    shards_per_batch = [len({k.split("_")[0] for k in b["keys"]}) for b in batches]
    assert max(shards_per_batch) >= 2


def test_corrupt_samples_are_skipped_counted_and_replaced_by_repeats(tmp_path: Any) -> None:
    folder = str(tmp_path)
    shards = write_local(folder, [30, 30, 30, 30])
    with open(os.path.join(folder, "shard-000000.tar"), "wb") as f:
        f.write(shard_bytes(0, 30, bad_jpeg=frozenset({3, 4}), no_image=frozenset({10})))
    good = shard_bytes(2, 30)
    with open(os.path.join(folder, "shard-000002.tar"), "wb") as f:
        f.write(good[: len(good) // 2])  # truncated mid-member: the rest of the shard is lost
    loader = _loader(folder, shards, readers=2, max_corrupt=0.5)
    batches = _run(loader)
    assert len(batches) == loader.steps_per_epoch == 15
    assert all(len(b["keys"]) == 8 for b in batches)
    m = loader.metrics()
    keys = [k for b in batches for k in b["keys"]]
    unique = set(keys)
    lost = 30 - sum(1 for k in unique if k.startswith("s002"))
    assert 10 < lost < 30  # the truncated shard's first half still counts
    assert not {"s000_00003", "s000_00004", "s000_00010"} & unique
    assert len(unique) == 120 - 3 - lost  # every readable sample was used once
    # skipped samples are made up by repeats of this reader's own samples, all counted
    assert m["repeats"] == len(keys) - len(unique) >= 3 + lost
    # every position a reader consumed was a sample handed out or a counted corrupt one
    state = loader.state_dict()
    assert len(keys) == 120 and sum(state["cursors"]) == len(keys) + m["corrupt"]
    assert state["samples"] == len(unique) == len(keys) - m["repeats"]  # repeats not counted
    assert sum(state["corrupt"]) == m["corrupt"] >= 3 + lost


def test_too_many_corrupt_samples_fail_naming_the_shard(tmp_path: Any) -> None:
    folder = str(tmp_path)
    shards = write_local(folder, [20, 20])
    with open(os.path.join(folder, "shard-000001.tar"), "wb") as f:
        f.write(b"\x00garbage" * 999)
    with pytest.raises(CorruptDataError, match=r"shard-000001\.tar \(\d+\)"):
        _run(_loader(folder, shards, max_corrupt=0.2))


def test_state_dict_is_small_json_and_validated(tmp_path: Any) -> None:
    shards = write_local(str(tmp_path), [40])
    loader = _loader(str(tmp_path), shards, readers=2)
    import json

    assert json.loads(json.dumps(loader.state_dict())) == {"epoch": 0, "step": 0}
    with pytest.raises(ValueError, match="step"):
        loader.load_state_dict({"epoch": 0, "step": -1})
    with pytest.raises(ValueError, match="cursors"):
        loader.load_state_dict({"epoch": 0, "step": 1, "cursors": [8]})
    with pytest.raises(ValueError, match="samples"):
        loader.load_state_dict({"epoch": 0, "step": 1, "samples": -1})
    # an older state without "samples": derived from the step (exact without repeats)
    loader.load_state_dict({"epoch": 0, "step": 2})
    assert [len(b["keys"]) for b in loader.epoch(0)] == [8, 8, 8]
    assert json.loads(json.dumps(loader.state_dict()))["samples"] == 40
    with pytest.raises(ValueError, match="rank 2"):
        _loader(str(tmp_path), shards, rank=2, world=2)
