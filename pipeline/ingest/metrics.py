"""Loader metrics: throughput, time the trainer waited for data, network and data quality."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class IngestMetrics:
    """Counters a `Loader` updates for every batch it hands to the trainer.

    ``samples_per_s`` is measured over the current `Loader.epoch` iteration (samples handed
    out / wall time since it began); the other figures are cumulative over the loader's life.
    """

    samples: int = 0
    data_wait_s: float = 0.0
    bytes_read: int = 0
    retries: int = 0
    corrupt: int = 0
    repeats: int = 0
    batches: int = 0
    _epoch_samples: int = 0
    _epoch_started: float = field(default_factory=time.perf_counter)

    def start_epoch(self) -> None:
        """Restart the throughput window (called when an epoch iteration begins)."""
        self._epoch_samples = 0
        self._epoch_started = time.perf_counter()

    def add_batch(self, batch: dict[str, Any], waited_s: float) -> None:
        """Account one batch (a reader's Batch dict) and the time spent waiting for it."""
        n = len(batch["keys"])
        self.samples += n
        self._epoch_samples += n
        self.batches += 1
        self.data_wait_s += waited_s
        self.bytes_read += int(batch["bytes"])
        self.retries += int(batch["retries"])
        self.corrupt += int(batch["corrupt"])
        self.repeats += int(batch["repeats"])

    def as_dict(self) -> dict[str, float]:
        """``samples_per_s, data_wait_s, bytes_read, retries, corrupt, repeats, samples``."""
        elapsed = time.perf_counter() - self._epoch_started
        return {
            "samples_per_s": self._epoch_samples / elapsed if elapsed > 0 else 0.0,
            "data_wait_s": self.data_wait_s,
            "bytes_read": float(self.bytes_read),
            "retries": float(self.retries),
            "corrupt": float(self.corrupt),
            "repeats": float(self.repeats),
            "samples": float(self.samples),
        }
