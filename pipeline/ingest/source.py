"""Raw samples of a reader's slices, straight from the tars: no decoding here.

`read_slices` streams each slice's shard through a `ReadAheadStream`, iterates the tar
members (`pipeline.ingest.tario`, webdataset's key rules), groups members by key into
samples and yields exactly one `RawSample` per *needed* sample id, in reading order:

- members of samples that are not needed (already emitted before a resume, or outside the
  slice) are skipped without copying their data (the header is parsed, the bytes pass);
- once the last needed member of a slice is read, the stream is closed (the rest of the
  shard is never downloaded);
- a slice whose first needed member lies after the shard's start opens its stream at the
  nearest recorded sample offset (the shard's offsets index, `pipeline.shards.offsets`)
  and stops at the next recorded offset after its last needed member; the stream checks
  that the shard still has the indexed version (ETag). Without an index it reads from
  byte 0, skipping members, as before;
- the next slice's stream opens as soon as the current one has fetched its last byte, so
  the network never idles between shards;
- a needed sample that never shows up (tar truncated or garbled, shard shorter than the
  manifest says) is yielded with ``files=None`` and a ``reason``: the reader counts it as
  corrupt. A network failure that survives the stream's retries is raised (`StreamError`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from webdataset.tariterators import base_plus_ext

from pipeline.ingest.stream import ReadAheadStream
from pipeline.ingest.tario import TarFormatError, iter_members
from pipeline.shards.offsets import read_offsets
from pipeline.shards.manifest import shard_uri
from pipeline.shards.plan import ShardSlice
from pipeline.shards.sources import IMAGE_EXTS
from pipeline.storage import Storage


@dataclass
class RawSample:
    """One sample's tar members, ``{"jpg": b"...", "cls": b"3"}``; ``files=None`` if unreadable."""

    shard: str
    member: int
    files: dict[str, bytes] | None
    reason: str = ""
    key: str = ""  # the tar key (member names without extension)


@dataclass
class StreamStats:
    """Network counters of every stream a source opened (bytes delivered, resumptions)."""

    bytes_read: int = 0
    retries: int = 0
    open_streams: list[ReadAheadStream] = field(default_factory=list)

    def snapshot(self) -> tuple[int, int]:
        """(bytes, retries) so far, including streams still open."""
        return (self.bytes_read + sum(s.bytes_read for s in self.open_streams),
                self.retries + sum(s.retries for s in self.open_streams))


@dataclass
class _Cursor:
    key: str | None = None
    index: int = -1  # index of the newest run with an image member
    image: bool = False  # the current run has shown its image member




@dataclass(frozen=True)
class StreamOptions:
    """How `read_slices` opens its streams (from ``ingest``/``storage`` config)."""

    read_ahead_bytes: int = 16 * 2**20
    max_retries: int = 5
    backoff_s: float = 0.5
    ranges: int = 1
    block_bytes: int = 4 * 2**20
    chunk_bytes: int = 2**20


def _open(storage: Storage, dataset_uri: str, sl: ShardSlice, want: list[int],
          opts: StreamOptions, stats: StreamStats) -> tuple[ReadAheadStream, int]:
    """A stream for the members ``want`` of slice ``sl``, and the index of its first member."""
    uri = shard_uri(dataset_uri, sl.shard)
    first, start, end, version = 0, 0, None, None
    index = read_offsets(storage, uri) if want[0] > 0 or want[-1] + 1 < sl.stop else None
    if index is not None:
        first, start = index.seek_point(want[0])
        end, version = index.end_point(want[-1] + 1), index.version
    stream = ReadAheadStream(storage, uri, start=start, end=end, version=version,
                             read_ahead_bytes=opts.read_ahead_bytes,
                             chunk_bytes=opts.chunk_bytes, max_retries=opts.max_retries,
                             backoff_s=opts.backoff_s, ranges=opts.ranges,
                             block_bytes=opts.block_bytes)
    stats.open_streams.append(stream)
    return stream, first


def _retire(stream: ReadAheadStream, stats: StreamStats) -> None:
    stream.close()
    stats.open_streams.remove(stream)
    stats.bytes_read += stream.bytes_read
    stats.retries += stream.retries


def read_slices(storage: Storage, dataset_uri: str, slices: Iterable[ShardSlice],
                needed: set[tuple[str, int]], stats: StreamStats,
                opts: StreamOptions) -> Iterator[RawSample]:
    """Yield a `RawSample` for every id in ``needed`` that falls in ``slices``, in tar order."""
    work = [(sl, want) for sl in slices
            if (want := sorted(m for m in range(sl.start, sl.stop) if (sl.shard, m) in needed))]
    nxt: tuple[ReadAheadStream, int] | None = None
    stream: ReadAheadStream | None = None
    try:
        for i, (sl, want) in enumerate(work):
            stream, first = nxt or _open(storage, dataset_uri, sl, want, opts, stats)
            nxt = None
            for sample in _read_one(stream, sl.shard, want, first):
                yield sample
                if nxt is None and i + 1 < len(work) and stream.fetched_all:
                    nxt = _open(storage, dataset_uri, *work[i + 1], opts, stats)
            _retire(stream, stats)
            stream = None
    finally:
        for s in (stream, nxt[0] if nxt else None):
            if s is not None:
                _retire(s, stats)


def _read_one(stream: ReadAheadStream, shard: str, want: list[int],
              first: int = 0) -> Iterator[RawSample]:
    """The needed members ``want`` (sorted indices) of one shard's tar stream.

    The stream starts at the header of member ``first`` (0: the tar's start).

    Samples are runs of consecutive members sharing a key (webdataset's `base_plus_ext`);
    member index i is the i-th run *with an image member* (runs without one, e.g. the
    failed downloads of an img2dataset shard, are not samples: `shards index` does not
    count them either). Side members (``.json``, ``.txt``) before the image are read when
    the sample may be needed; reading stops once the run of index ``want[-1]`` ends.
    A sample whose run was cut short by a format error is reported as unreadable.
    """
    wanted, last = set(want), want[-1]
    cur = _Cursor(index=first - 1)

    def select(fname: str) -> bool:
        key, ext = base_plus_ext(fname)
        if key is None:
            return False
        if key != cur.key:
            cur.key, cur.image = key, False
        if not cur.image and (ext or "").lower() in IMAGE_EXTS:
            cur.image, cur.index = True, cur.index + 1
        return (cur.index if cur.image else cur.index + 1) in wanted

    group: dict[str, bytes] = {}
    group_key: str | None = None
    group_index = -1  # >= 0 once the run's (wanted) image member was read
    emitted: set[int] = set()
    failure = ""
    try:
        for fname, data in iter_members(stream, select):
            key, ext = base_plus_ext(fname)
            if key != group_key:
                if group_index >= 0:
                    emitted.add(group_index)
                    yield RawSample(shard, group_index, group, key=group_key or "")
                group, group_key, group_index = {}, key, -1
            if cur.index > last:
                break
            if data is None:
                continue
            ext = (ext or "").lower()
            group[ext] = data
            if ext in IMAGE_EXTS and group_index < 0:
                group_index = cur.index
    except TarFormatError as exc:
        failure = f"unreadable tar ({exc})"
        group_index = -1  # the sample being read may be incomplete
    if group_index >= 0:
        emitted.add(group_index)
        yield RawSample(shard, group_index, group, key=group_key or "")
    for m in want:
        if m not in emitted:
            yield RawSample(shard, m, None, failure or "sample missing from the tar")
