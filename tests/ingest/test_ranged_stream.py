"""Parallel ranged reads, mid-shard seeks through the offsets index, changed objects (no servers)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan
from pipeline.ingest.source import StreamOptions, StreamStats, read_slices
from pipeline.ingest.stream import ObjectChanged, ReadAheadStream, StreamError
from pipeline.shards.offsets import offsets_uri, parse_offsets, read_offsets
from pipeline.shards.plan import ShardSlice
from pipeline.shards.synthetic import write_jpeg_folder
from pipeline.shards.writer import write_shards
from pipeline.storage import Storage
from tests.ingest.shardkit import shard_bytes

pytestmark = pytest.mark.unit


def _read_all(stream: ReadAheadStream, rng: np.random.Generator) -> bytes:
    out = []
    while piece := stream.read(int(rng.integers(1, 70_000))):
        out.append(piece)
    return b"".join(out)


@pytest.mark.parametrize("ranges", [1, 2, 4])
def test_ranged_stream_delivers_exact_bytes_in_order(tmp_path: Any, ranges: int) -> None:
    data = np.random.default_rng(0).bytes(1_000_003)
    path = str(tmp_path / "obj")
    with open(path, "wb") as f:
        f.write(data)
    rng = np.random.default_rng(1)
    for start, end in [(0, None), (4321, None), (100, 777_777), (1_000_003, None), (5, 5)]:
        with ReadAheadStream(Storage(), path, start=start, end=end, ranges=ranges,
                             block_bytes=65_537, read_ahead_bytes=200_000) as s:
            assert _read_all(s, rng) == data[start:end]
            assert s.fetched_all
            assert s.bytes_read == len(data[start:end])


class _SlowCounting(Storage):
    """Local ranged reads that take 20 ms each; records the peak number at once and fails
    the first attempt at one offset (a dropped connection)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.active = self.peak = 0
        self.fail_at, self.starts = fail_at, []
        self._lock = threading.Lock()

    def get_range(self, uri: str, start: int, end: int) -> tuple[bytes, int, str]:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.starts.append(start)
            fail = start == self.fail_at and self.starts.count(start) == 1
        try:
            time.sleep(0.02)
            if fail:
                raise ConnectionResetError("peer reset")
            return super().get_range(uri, start, end)
        finally:
            with self._lock:
                self.active -= 1


def test_ranges_run_in_parallel_and_a_failed_block_alone_is_retried(tmp_path: Any) -> None:
    data = np.random.default_rng(2).bytes(40 * 1000)
    path = str(tmp_path / "obj")
    with open(path, "wb") as f:
        f.write(data)
    storage = _SlowCounting(fail_at=7000)
    with ReadAheadStream(storage, path, ranges=4, block_bytes=1000, read_ahead_bytes=8000,
                         backoff_s=0.001) as s:
        assert s.read(-1) == data
        assert s.retries == 1
    assert storage.peak == 4  # never more than `ranges` requests at once, and that many
    assert sorted(storage.starts) == sorted([*range(0, 40_000, 1000), 7000])


def test_an_object_replaced_during_a_read_fails_clearly(tmp_path: Any) -> None:
    path = str(tmp_path / "obj")
    with open(path, "wb") as f:
        f.write(bytes(50_000))
    with ReadAheadStream(Storage(), path, ranges=2, block_bytes=1000,
                         read_ahead_bytes=1000) as s:
        assert s.read(1000) == bytes(1000)
        with open(path + ".new", "wb") as f:
            f.write(b"\1" * 50_000)
        os.replace(path + ".new", path)
        os.utime(path, ns=(1, 1))  # a different version even on a coarse clock
        with pytest.raises(ObjectChanged, match="not the one being read"):
            s.read(-1)
    # a stream told which version to expect refuses another one at once, in both modes
    for ranges in (1, 3):
        with ReadAheadStream(Storage(), path, ranges=ranges, version="v0") as s:
            with pytest.raises(ObjectChanged, match="version v0"):
                s.read(10)


def _dataset(tmp_path: Any, n: int = 60, per_shard: int = 40) -> tuple[str, list[Any]]:
    write_jpeg_folder(str(tmp_path / "jpegs"), n, width=96, height=80)
    dest = str(tmp_path / "ds")
    manifest = write_shards(str(tmp_path / "jpegs"), dest, storage=Storage(),
                            samples_per_shard=per_shard, progress=False, workers=1)
    return dest, manifest.shards


def _slice_read(dest: str, slices: list[ShardSlice], ranges: int) -> tuple[list[Any], int]:
    needed = {(sl.shard, m) for sl in slices for m in range(sl.start, sl.stop)}
    stats = StreamStats()
    out = [(r.shard, r.member, r.key, r.files) for r in read_slices(
        Storage(), dest, slices, needed, stats, StreamOptions(ranges=ranges, block_bytes=8192))]
    return out, stats.bytes_read


def test_a_slice_in_mid_shard_seeks_by_offset_and_matches_the_full_read(tmp_path: Any) -> None:
    dest, shards = _dataset(tmp_path)
    first = shards[0]
    index = read_offsets(Storage(), os.path.join(dest, first.key))
    assert index is not None and index.samples == first.samples == 40
    assert index.bytes == first.bytes and index.sha256 == first.sha256
    second = read_offsets(Storage(), os.path.join(dest, shards[1].key))
    assert second is not None and second.offsets[1] > 0
    mid = [ShardSlice(first.key, 25, 30), ShardSlice(shards[1].key, 17, 20)]
    for ranges in (1, 4):
        seeked, seek_bytes = _slice_read(dest, mid, ranges)
        assert [(s, m) for s, m, _, _ in seeked] == [(first.key, m) for m in range(25, 30)] + \
            [(shards[1].key, m) for m in range(17, 20)]
        whole, _ = _slice_read(dest, [ShardSlice(first.key, 0, 40),
                                      ShardSlice(shards[1].key, 0, 20)], ranges)
        assert seeked == [w for w in whole if (w[0] == first.key and 25 <= w[1] < 30)
                          or (w[0] == shards[1].key and w[1] >= 17)]
        # exactly samples 16..31 of the first shard and 16.. to the end of the second
        assert seek_bytes == index.offsets[2] - index.offsets[1] + \
            shards[1].bytes - second.offsets[1]
    # without the index (an indexed external corpus) the same samples, read from byte 0
    for shard in shards:
        os.remove(offsets_uri(os.path.join(dest, shard.key)))
    plain, plain_bytes = _slice_read(dest, mid, 4)
    assert plain == seeked and plain_bytes > seek_bytes


def test_a_rewritten_shard_under_a_stale_index_fails_instead_of_misreading(tmp_path: Any) -> None:
    dest, shards = _dataset(tmp_path, n=40)
    path = os.path.join(dest, shards[0].key)
    with open(path, "wb") as f:
        f.write(shard_bytes(0, 40))  # other bytes; the sidecar still holds the old offsets
    for ranges in (1, 4):
        with pytest.raises(StreamError, match="not the one being read"):
            _slice_read(dest, [ShardSlice(shards[0].key, 20, 40)], ranges)


def test_the_next_shard_is_opened_before_the_current_one_is_consumed(tmp_path: Any) -> None:
    dest, shards = _dataset(tmp_path, n=120, per_shard=40)
    slices = [ShardSlice(s.key, 0, s.samples) for s in shards]
    needed = {(sl.shard, m) for sl in slices for m in range(sl.start, sl.stop)}
    stats = StreamStats()
    open_counts = [len(stats.open_streams) for _ in read_slices(
        Storage(), dest, slices, needed, stats, StreamOptions(ranges=2, block_bytes=2**20,
                                                              read_ahead_bytes=8 * 2**20))]
    assert len(open_counts) == 120 and max(open_counts) == 2 and open_counts[-1] == 1
    assert stats.open_streams == [] and stats.bytes_read == sum(s.bytes for s in shards)


def test_resume_with_offset_seeks_reproduces_the_remaining_batches(tmp_path: Any) -> None:
    dest, shards = _dataset(tmp_path, n=90, per_shard=32)

    def loader() -> Loader:
        return Loader(DataConfig(train=dest, image_size=16),
                      IngestConfig(readers_per_worker=2, shuffle_window=8, read_ahead_mb=1,
                                   range_block_mb=1),
                      AugmentConfig(),
                      LoaderPlan([(s.key, s.samples) for s in shards], rank=0, world_size=1,
                                 per_rank_batch=6, seed=3),
                      storage=StorageConfig(), use_ray=False)

    full = list(loader().epoch(0))
    first = loader()
    it = first.epoch(0)
    head = [next(it) for _ in range(5)]
    state = first.state_dict()
    first.close()
    again = loader()
    again.load_state_dict(state)
    rest = list(again.epoch(0))
    assert len(head) + len(rest) == len(full) == 90 // 6
    for a, b in zip(head + rest, full):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])


def test_offsets_index_arithmetic_and_validation() -> None:
    good = (b'{"format": "mocopipe.offsets/1", "shard": "s.tar", "bytes": 9000, "sha256": "x",'
            b' "version": "v", "samples": 40, "every": 16, "offsets": [0, 3000, 6000]}')
    idx = parse_offsets(good)
    assert idx.seek_point(0) == (0, 0) and idx.seek_point(15) == (0, 0)
    assert idx.seek_point(16) == (16, 3000) and idx.seek_point(39) == (32, 6000)
    assert idx.end_point(1) == 3000 and idx.end_point(16) == 3000
    assert idx.end_point(33) is None and idx.end_point(40) is None
    for bad, why in [(b"[]", "not a shard offsets"), (good.replace(b"6000", b"9000"),
                                                         "inconsistent"),
                     (good.replace(b"/1", b"/9"), "format"),
                     (good.replace(b", 6000", b""), "inconsistent")]:
        with pytest.raises(ValueError, match=why):
            parse_offsets(bad)
