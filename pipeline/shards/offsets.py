"""Per-shard offsets index: where every K-th sample of a tar starts, in a small sidecar.

A reader whose slice starts in the middle of a shard would otherwise download (and skip)
every member before it. When shards are written, `OffsetRecorder` notes the byte offset of
each sample's first tar header; `ShardSink` stores every ``every``-th of them next to the
shard as ``<shard key>.idx.json`` (``shard-000012.tar.idx.json``), with the shard's size,
sha256 and the storage's version tag (S3 ETag) read back after the upload. The manifest is
not touched (it has to stay small for a million shards).

A reader then opens a ranged stream at `seek_point` and checks that the object still has
the recorded version and size (`pipeline.ingest.stream`), so stale offsets never point into
a rewritten shard. Shards without a sidecar (indexed external corpora, older datasets) are
read from their start, skipping members, exactly as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.storage import Storage, StorageError

FORMAT = "mocopipe.offsets/1"
SUFFIX = ".idx.json"
DEFAULT_EVERY = 16


def offsets_uri(shard_uri: str) -> str:
    """The sidecar's URI for the shard at ``shard_uri``."""
    return shard_uri + SUFFIX


@dataclass(frozen=True)
class ShardOffsets:
    """Byte offsets of samples ``0, every, 2*every, ...`` (tar order) of one shard."""

    shard: str
    bytes: int
    sha256: str
    version: str
    samples: int
    every: int
    offsets: tuple[int, ...]

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "shard": self.shard, "bytes": self.bytes,
                           "sha256": self.sha256, "version": self.version,
                           "samples": self.samples, "every": self.every,
                           "offsets": list(self.offsets)}).encode()

    def seek_point(self, member: int) -> tuple[int, int]:
        """``(first member, byte offset)`` of the last recorded sample at or before ``member``."""
        if member < 0:
            raise ValueError(f"{self.shard}: member {member} must be >= 0")
        j = min(member // self.every, len(self.offsets) - 1)
        return j * self.every, self.offsets[j]

    def end_point(self, stop: int) -> int | None:
        """A byte offset at or after the start of sample ``stop`` (None: the shard's end)."""
        j = -(-stop // self.every)  # first recorded sample >= stop
        return self.offsets[j] if stop < self.samples and j < len(self.offsets) else None


def parse_offsets(data: bytes) -> ShardOffsets:
    """Validate a sidecar's bytes; ValueError naming the problem when they are not one."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
        offsets = tuple(int(o) for o in doc["offsets"])
        out = ShardOffsets(shard=str(doc["shard"]), bytes=int(doc["bytes"]),
                           sha256=str(doc["sha256"]), version=str(doc["version"]),
                           samples=int(doc["samples"]), every=int(doc["every"]),
                           offsets=offsets)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a shard offsets index ({type(exc).__name__}: {exc})") from exc
    if out.every < 1 or not offsets or offsets[0] != 0 or list(offsets) != sorted(offsets) \
            or offsets[-1] >= out.bytes or len(offsets) != -(-out.samples // out.every):
        raise ValueError(f"inconsistent offsets for {out.shard} ({out.samples} samples, "
                         f"every {out.every}, {len(offsets)} offsets, {out.bytes} bytes)")
    return out


def read_offsets(storage: Storage, shard_uri: str) -> ShardOffsets | None:
    """The shard's sidecar, or None when it has none or it is unusable (read from the start)."""
    try:
        return parse_offsets(storage.get_bytes(offsets_uri(shard_uri)))
    except (StorageError, ValueError):  # absent or unusable: costs only the skip it saves
        return None


class OffsetRecorder:
    """Collects the byte offset at which each sample of one shard starts."""

    def __init__(self) -> None:
        self.starts: list[int] = []

    def add(self, offset: int) -> None:
        assert not self.starts or offset > self.starts[-1], "sample offsets must increase"
        self.starts.append(offset)

    def build(self, *, shard: str, size: int, sha256: str, version: str,
              every: int = DEFAULT_EVERY) -> ShardOffsets:
        return ShardOffsets(shard=shard, bytes=size, sha256=sha256, version=version,
                            samples=len(self.starts), every=every,
                            offsets=tuple(self.starts[::every]))
