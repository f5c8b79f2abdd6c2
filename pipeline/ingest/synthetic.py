"""`SyntheticReader`: a reader stand-in that hands out pre-built uint8 batches (no I/O).

`mocopipe bench pipeline` runs the same training twice in one bench run: once on the real
ingest (S3 -> reader actors -> object store -> loader) and once with ``ingest.synthetic =
true``, where the `Loader` uses these in-process readers instead. Everything after the
loader (device transfer, batched augment, the MoCo step, DDP, metrics) is identical, so the
ratio of the two step rates is what the ingest costs the trainer.

The batch has the real shapes and dtype (``view1``/``view2``: uint8 (B, C, H, W), H = W =
``data.image_size``) and is built once per reader from a seeded generator; every
``next_batch`` returns the same arrays (the trainer never writes into them: the real
object-store arrays are read-only too).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.shards.plan import ReaderPlan


class SyntheticReader:
    """Same interface as `pipeline.ingest.reader.ShardReader`; see the module docstring."""

    def __init__(self, *, storage: StorageConfig, data: DataConfig, augment: AugmentConfig,
                 ingest: IngestConfig, dataset_uri: str, batch_size: int) -> None:
        del storage, augment, ingest  # a stand-in: nothing is read or decoded
        if batch_size < 1:
            raise ValueError(f"SyntheticReader: batch_size must be >= 1, got {batch_size}")
        side, c = data.image_size, data.channels
        rng = np.random.default_rng(batch_size * 7919 + side)
        self._views = [rng.integers(0, 256, size=(batch_size, c, side, side), dtype=np.uint8)
                       for _ in range(2)]
        for v in self._views:
            v.setflags(write=False)
        self.dataset_uri, self.batch_size = dataset_uri, batch_size
        self.plan: ReaderPlan | None = None
        self.cursor = 0

    def pid(self) -> int:
        return os.getpid()

    def streams(self) -> list[tuple[str, int, int]]:
        return []

    def start(self, plan: ReaderPlan, cursor: int = 0, corrupt: int = 0) -> None:
        if cursor < 0 or corrupt != 0:
            raise ValueError(f"SyntheticReader: bad resume point cursor={cursor}, "
                             f"corrupt={corrupt}")
        self.plan, self.cursor = plan, cursor

    def next_batch(self) -> dict[str, Any]:
        """The pre-built batch, with the metadata a `ShardReader` batch carries."""
        if self.plan is None:
            raise RuntimeError("SyntheticReader.next_batch() called before start()")
        first = self.cursor
        self.cursor += self.batch_size
        return {"view1": self._views[0], "view2": self._views[1],
                "keys": [f"synthetic-{first + i}" for i in range(self.batch_size)],
                "positions": [["synthetic", first + i] for i in range(self.batch_size)],
                "corrupt": 0, "repeats": 0, "bytes": 0, "retries": 0,
                "cursor": self.cursor, "corrupt_total": 0}

    def close(self) -> None:
        self.plan = None
