"""`ShardReader`: one reader of one train rank; streams, decodes and augments its slices.

Plain Python, so it runs in-process (tests, ``Loader(use_ray=False)``) or as a Ray actor
(`pipeline.ingest.actor.ReaderActor`). Per epoch the loader calls ``start(plan, cursor)``
and then ``next_batch()`` once per batch the reader owes.

Emission order (`pipeline.ingest.order`): the plan's samples through a seeded shuffle
window, computed before reading. The reader pulls raw samples from the tars in reading
order (`pipeline.ingest.source`), buffers the raw bytes of those that come out of the
window later (at most ``ingest.shuffle_window`` of them) and decodes each sample only when
its turn comes. Emission position ``p`` seeds the sample's augmentation, so a resumed
reader (``start(plan, cursor=p)``) reproduces the same pixels without reading or decoding
anything before ``p``.

Corrupt samples (undecodable bytes, no image member, unreadable tar) are skipped and
counted; the batch is filled from the following positions. Past the planned samples the
reader continues on repeat rounds (deterministic reshuffles) and counts repeats. When the
corrupt count exceeds ``ingest.max_corrupt_fraction`` of the samples this reader reads this
epoch, `CorruptDataError` names the shards involved.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.augment import decode_image, decode_min_side, two_views
from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.order import SampleId, augment_rng, round_order, round_slices
from pipeline.ingest.source import RawSample, StreamOptions, StreamStats, read_slices
from pipeline.shards.plan import ReaderPlan
from pipeline.shards.sources import IMAGE_EXTS
from pipeline.storage import Storage

_MB = 2**20


class CorruptDataError(ValueError):
    """Too many corrupt samples; the message names the shards and their counts."""


class ShardReader:
    """Produces two-view uint8 batches for one `ReaderPlan` at a time.

    Args:
        storage, data, augment, ingest: config sections.
        dataset_uri: the dataset folder (``s3://bucket/prefix`` or local) holding the shards.
        batch_size: samples per batch (the per-rank batch).
    """

    def __init__(self, *, storage: StorageConfig, data: DataConfig, augment: AugmentConfig,
                 ingest: IngestConfig, dataset_uri: str, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"ShardReader: batch_size must be >= 1, got {batch_size}")
        # One retry layer, counted: the streams retry (and resume) themselves, so botocore's
        # own retries are off for the reader's requests (see ReadAheadStream).
        self.storage = Storage(dataclasses.replace(storage, max_retries=0))
        self.storage_cfg, self.data, self.augment, self.ingest = storage, data, augment, ingest
        self.dataset_uri = dataset_uri
        self.batch_size = batch_size
        self._min_side = decode_min_side(data.image_size, augment.crop_scale_min)
        self.plan: ReaderPlan | None = None
        self._samples = 0  # plan.samples (a sum over the slices), once per start()
        self.cursor = 0
        self.corrupt_total = 0
        self.corrupt_shards: dict[str, int] = {}
        self._stats = StreamStats()
        self._sent = (0, 0)  # (bytes, retries) already reported in earlier batches
        self._round = -1
        self._order: list[SampleId] = []
        self._source: Iterator[RawSample] | None = None
        self._buffer: dict[SampleId, RawSample] = {}

    # ------------------------------------------------------------------ control

    def pid(self) -> int:
        """The process id of this reader (for memory checks on actors)."""
        return os.getpid()

    def streams(self) -> list[tuple[str, int, int]]:
        """Open shard streams as ``(uri, bytes fetched so far, object size)`` (monitoring)."""
        return [(s.uri, s.position, s.total_size or 0) for s in self._stats.open_streams]

    def start(self, plan: ReaderPlan, cursor: int = 0, corrupt: int = 0) -> None:
        """Begin (or resume) an epoch at emission position ``cursor``.

        ``corrupt`` is the number of corrupt samples met before ``cursor`` (from the
        loader's state), so the corrupt fraction spans the whole epoch across resumes.
        """
        if plan.batches > 0 and plan.samples < 1:
            raise ValueError(f"reader {plan.reader} of rank {plan.rank}: the plan asks for "
                             f"{plan.batches} batches but has no samples")
        if cursor < 0 or corrupt < 0 or corrupt > cursor:
            raise ValueError(f"reader {plan.reader}: bad resume point cursor={cursor}, "
                             f"corrupt={corrupt}")
        self._close_source()
        self.plan, self.cursor, self.corrupt_total = plan, cursor, corrupt
        self._samples = plan.samples
        self.corrupt_shards = {}
        self._round = -1

    def close(self) -> None:
        """Close any open stream (its connection and read-ahead thread)."""
        self._close_source()

    def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()  # type: ignore[attr-defined]  # generator: runs its finally
        self._source = None
        self._buffer.clear()

    # ------------------------------------------------------------------ sample supply

    def _enter_round(self, round_: int, offset: int) -> None:
        """Compute round ``round_``'s order and open a source for ``order[offset:]``."""
        assert self.plan is not None
        self._close_source()
        self._round = round_
        self._order = round_order(self.plan, round_, self.ingest.shuffle_window)
        needed = set(self._order[offset:])
        opts = StreamOptions(read_ahead_bytes=self.ingest.read_ahead_mb * _MB,
                             max_retries=self.storage_cfg.max_retries,
                             backoff_s=self.storage_cfg.retry_backoff_s,
                             ranges=self.ingest.stream_ranges,
                             block_bytes=self.ingest.range_block_mb * _MB)
        self._source = read_slices(self.storage, self.dataset_uri,
                                   round_slices(self.plan, round_), needed, self._stats, opts)

    def _take(self, position: int) -> tuple[SampleId, RawSample]:
        """The raw sample at emission ``position`` (reading ahead into the buffer as needed)."""
        assert self.plan is not None
        length = self._samples
        round_, offset = divmod(position, length)
        if round_ != self._round:
            self._enter_round(round_, offset)
        sid = self._order[offset]
        while sid not in self._buffer:
            assert self._source is not None
            raw = next(self._source, None)
            if raw is None:  # internal invariant: the source yields every needed id
                raise RuntimeError(f"reader {self.plan.reader}: sample {sid} never arrived")
            self._buffer[(raw.shard, raw.member)] = raw
        return sid, self._buffer.pop(sid)

    def _views(self, raw: RawSample, position: int) -> tuple[np.ndarray, np.ndarray] | str:
        """Both views (each CxHxW uint8) of a raw sample, or the reason it is corrupt."""
        assert self.plan is not None
        if raw.files is None:
            return raw.reason
        ext = next((e for e in IMAGE_EXTS if e in raw.files), None)
        if ext is None:
            return f"no image member (has {sorted(raw.files)})"
        size = self.data.image_size
        try:
            img = decode_image(raw.files[ext], ext, self.data.channels, min_side=self._min_side)
            return two_views(img, size, self.augment, augment_rng(self.plan, position))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means bad image bytes
            return f"bad {ext} bytes ({type(exc).__name__}: {exc})"

    def _count_corrupt(self, shard: str) -> None:
        assert self.plan is not None
        self.corrupt_total += 1
        self.corrupt_shards[shard] = self.corrupt_shards.get(shard, 0) + 1
        allowed = self.ingest.max_corrupt_fraction * max(self.cursor, self._samples)
        if self.corrupt_total > allowed:
            shards = ", ".join(f"{k} ({n})" for k, n in sorted(self.corrupt_shards.items()))
            raise CorruptDataError(
                f"{self.corrupt_total} corrupt samples out of {self.cursor} read by reader "
                f"{self.plan.reader} of rank {self.plan.rank} in epoch {self.plan.epoch} "
                f"exceed ingest.max_corrupt_fraction={self.ingest.max_corrupt_fraction} of "
                f"{self.plan.samples} planned; corrupt samples per shard of {self.dataset_uri}: "
                f"{shards}")

    # ------------------------------------------------------------------ batches

    def next_batch(self) -> dict[str, Any]:
        """The next batch of the emission order.

        Returns the Batch dict: ``view1``/``view2`` uint8 (B, C, H, W), ``keys`` (B,),
        ``positions`` [[shard, member]] (B,), ``corrupt``/``repeats`` (skipped corrupt
        samples / repeated samples in this batch), ``bytes``/``retries`` (network since the
        previous batch), ``cursor`` (emission position after this batch) and
        ``corrupt_total`` (corrupt samples this epoch so far; the loader saves both).
        """
        if self.plan is None:
            raise RuntimeError("ShardReader.next_batch() called before start()")
        v1: list[np.ndarray] = []
        v2: list[np.ndarray] = []
        keys: list[str] = []
        positions: list[list[Any]] = []
        corrupt = repeats = 0
        while len(keys) < self.batch_size:
            position = self.cursor
            (shard, member), raw = self._take(position)
            self.cursor += 1
            views = self._views(raw, position)
            if isinstance(views, str):
                corrupt += 1
                self._count_corrupt(shard)
                continue
            v1.append(views[0])
            v2.append(views[1])
            keys.append(raw.key)
            positions.append([shard, member])
            repeats += position >= self._samples
        total = self._stats.snapshot()
        nbytes, retries = total[0] - self._sent[0], total[1] - self._sent[1]
        self._sent = total
        return {"view1": np.stack(v1), "view2": np.stack(v2), "keys": keys,
                "positions": positions, "corrupt": corrupt, "repeats": int(repeats),
                "bytes": nbytes, "retries": retries, "cursor": self.cursor,
                "corrupt_total": self.corrupt_total}

