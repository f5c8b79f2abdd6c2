"""`ShardSink`: webdataset's ShardWriter into local temp tars, then parallel upload.

Each shard's sha256 and size are computed while the tar is written (a hashing file object
handed to ShardWriter through its `opener`). When a shard closes, the sink names it
(``shard-NNNNNN.tar``, numbering continues after the dataset's last shard; named
``shard-NNNNNN-<sha256[:12]>.tar`` in an append, or when the plain name is live with other
bytes, so concurrent writers and rewrites never overwrite a listed shard) and an upload
thread either finds the same bytes already stored (same size and sha256: a resumed write)
or uploads the file with its sha256 as object metadata (multipart above the configured
threshold). Every upload is create-only (If-None-Match): a plain name another writer took
meanwhile (two fresh writes racing into one new dataset) is never overwritten; the shard
goes under its content name instead. A partial shard (an exception before it closed) is never uploaded. Next to each
stored shard goes its offsets index (`pipeline.shards.offsets`: where every K-th sample
starts), so a reader can begin mid-shard with a ranged GET.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import defaultdict
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, Iterator

import webdataset as wds

from pipeline.shards.manifest import ShardInfo, shard_key
from pipeline.shards.offsets import OffsetRecorder, offsets_uri
from pipeline.storage import PreconditionFailed, Storage, StorageError, is_s3, join

MB = 2**20


class _HashingFile:
    """A write-only file that also computes sha256 and size of what passes through."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = open(path, "wb")
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MB), b""):
            h.update(chunk)
    return h.hexdigest()


class ShardSink:
    """Turns closed local shards into stored shards; `finish()` returns their ShardInfos."""

    def __init__(self, storage: Storage, dest: str, *, workers: int, run_at: str,
                 first_index: int, known: set[str], previous: dict[str, ShardInfo],
                 taken: frozenset[str] = frozenset(), unique: bool = False) -> None:
        self.storage, self.dest, self.run_at = storage, dest, run_at
        self._next = first_index
        self._known = known  # sha256 of shards already in the dataset (append): not re-added
        self._previous = previous  # old manifest entries by key: keep added_at when unchanged
        self._taken = taken  # keys the live manifest lists: never overwritten with other bytes
        self._unique = unique  # always name shards by content (concurrent appends)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shards-upload")
        self._limit = workers + 1  # closed shards waiting on disk at most
        self._futures: list[Future[tuple[ShardInfo, bool]]] = []
        self._files: dict[str, _HashingFile] = {}
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._offsets: defaultdict[str, OffsetRecorder] = defaultdict(OffsetRecorder)
        self._writer: Any = None
        self._aborting = False
        self._failed = threading.Event()
        self._changed = False
        self.closed_bytes = 0
        self.dropped = 0  # shards whose exact bytes the dataset already holds (append)

    # ------------------------------------------------------------------ writing side

    @contextlib.contextmanager
    def open(self, tmpdir: str, shard_size_bytes: int, samples_per_shard: int) -> Iterator[Any]:
        """Yield an object with ``write(sample_dict)`` (webdataset ShardWriter underneath)."""
        def opener(fname: str) -> _HashingFile:
            self._files[fname] = _HashingFile(fname)
            return self._files[fname]

        self._writer = wds.ShardWriter(
            os.path.join(tmpdir, "local-%06d.tar"), maxcount=samples_per_shard or 10**12,
            maxsize=shard_size_bytes, post=self._closed, verbose=0, opener=opener,
            encoder=False, mtime=0)  # fixed int mtime: identical bytes, no per-member PAX header
        try:
            yield self
        except BaseException:
            self._aborting = True  # the open shard is partial: close it, never upload it
            with contextlib.suppress(Exception):
                self._writer.close()
            raise
        self._writer.close()  # posts the last shard

    def write(self, sample: dict[str, Any]) -> None:
        before = self._writer.fname
        # the tar's logical position (the file lags behind: "w|" mode buffers 10 KiB records)
        offset = self._writer.tarstream.tarstream.offset if self._writer.tarstream else 0
        self._writer.write(sample)
        fname = self._writer.fname
        self._counts[fname] += 1
        self._offsets[fname].add(offset if fname == before else 0)  # 0: a new shard began

    def _closed(self, fname: str) -> None:
        """ShardWriter's post hook (main thread, shard order): name it, queue its upload."""
        hf = self._files.pop(fname)
        hf.close()
        samples = self._counts.pop(fname, 0)
        offsets = self._offsets.pop(fname, OffsetRecorder())
        if self._aborting or samples == 0 or hf.hexdigest() in self._known:
            self.dropped += int(not self._aborting and samples > 0)
            os.remove(fname)
            return
        key = shard_key(self._next)
        prev = self._previous.get(key)
        if self._unique or (key in self._taken and (prev is None
                                                    or prev.sha256 != hf.hexdigest())):
            key = shard_key(self._next, hf.hexdigest())  # content-named: no clobbering
        self._next += 1
        self.closed_bytes += hf.size
        self._changed = True
        self._futures.append(self._pool.submit(self._store, key, self._next - 1, fname,
                                               hf.hexdigest(), hf.size, samples, offsets))
        while sum(not f.done() for f in self._futures) > self._limit:  # disk backpressure
            wait([f for f in self._futures if not f.done()], return_when=FIRST_EXCEPTION,
                 timeout=1.0)
        for f in self._futures:  # stop early on the first failed upload
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    # ------------------------------------------------------------------ upload side

    def _already_stored(self, uri: str, sha: str, size: int) -> bool:
        if self.storage.size(uri) != size:
            return False
        if is_s3(uri):
            return (self.storage.metadata(uri) or {}).get("sha256") == sha
        return file_sha256(uri) == sha

    def _create(self, key: str, index: int, path: str, sha: str, size: int) -> tuple[str, bool]:
        """Store the file as `key`, or find it already stored there; never replace an object.

        Every shard PUT is create-only (``If-None-Match: *``): when the name is taken by
        other bytes (another writer racing into the same dataset, or what a crashed earlier
        write left), the shard goes under its content name ``shard-NNNNNN-<sha[:12]>.tar``
        instead. Returns (key used, uploaded)."""
        for name in dict.fromkeys((key, shard_key(index, sha))):
            uri = join(self.dest, name)
            if self._already_stored(uri, sha, size):  # a resumed write: same bytes stored
                return name, False
            try:
                self.storage.put_file(uri, path, {"sha256": sha}, if_none_match=True)
                return name, True
            except PreconditionFailed:
                if self._already_stored(uri, sha, size):  # same bytes won (or our own retry)
                    return name, False
        raise StorageError(f"{join(self.dest, shard_key(index, sha))}: the name is taken by "
                           f"other bytes (not overwritten; remove the stray object)")

    def _store(self, key: str, index: int, path: str, sha: str, size: int, samples: int,
               offsets: OffsetRecorder) -> tuple[ShardInfo, bool]:
        if self._failed.is_set():  # an earlier upload failed: the write is over
            raise RuntimeError(f"{key}: not uploaded (an earlier shard upload failed)")
        try:
            key, uploaded = self._create(key, index, path, sha, size)
            present = not uploaded
            uri = join(self.dest, key)
            version = self.storage.version(uri) or ""
            index = offsets.build(shard=key, size=size, sha256=sha, version=version)
            self.storage.put_bytes(offsets_uri(uri), index.to_json())
        except BaseException:
            self._failed.set()
            raise
        os.remove(path)
        prev = self._previous.get(key)
        added = prev.added_at if prev is not None and prev.sha256 == sha else self.run_at
        return ShardInfo(key=key, samples=samples, bytes=size, sha256=sha, added_at=added), \
            not present

    # ------------------------------------------------------------------ results

    def finish(self) -> list[ShardInfo]:
        """Wait for every upload (in shard order); raise the first failure."""
        for f in self._futures:  # the first failure in shard order is the cause
            if f.exception() is not None and "earlier shard upload failed" not in str(
                    f.exception()):
                raise f.exception()  # type: ignore[misc]
        results = [f.result() for f in self._futures]
        self.uploaded = sum(up for _, up in results)
        return [info for info, _ in results]

    def abort(self) -> None:
        """Cancel queued uploads and wait for running ones (safe after finish)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for hf in self._files.values():
            with contextlib.suppress(OSError):
                hf.close()

    def changed(self) -> bool:
        changed, self._changed = self._changed, False
        return changed

    def written_bytes(self) -> int:
        return self.closed_bytes + sum(hf.size for hf in self._files.values())

    def postfix(self, elapsed: float) -> str:
        mb = self.written_bytes() / MB
        done = sum(f.done() for f in self._futures)
        return f"{mb:.1f} MB, shards {done}/{len(self._futures)} stored, " \
               f"{mb / max(elapsed, 1e-9):.1f} MB/s"

    def summary(self, dest: str, samples: int, skipped: int, elapsed: float) -> str:
        """The final one-line report."""
        mb = self.closed_bytes / MB
        shards = len(self._futures)
        uploaded = getattr(self, "uploaded", 0)
        return (f"wrote {samples} samples in {shards} shards ({mb:.1f} MB) to {dest} in "
                f"{elapsed:.1f} s: {samples / max(elapsed, 1e-9):.0f} samples/s, "
                f"{mb / max(elapsed, 1e-9):.1f} MB/s; uploaded {uploaded}, already stored "
                f"{shards - uploaded}, already in dataset {self.dropped}, skipped inputs {skipped}")
