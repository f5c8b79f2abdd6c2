"""A resumable read-ahead byte stream over one object (`Storage.get_stream`).

Why: a tar parser reading a boto3 body directly alternates small socket reads with Python
parsing on one thread, and reaches well under half of a raw GET's throughput. Here a
background thread does large reads (``chunk_bytes``, default 1 MiB) into a bounded queue
(``read_ahead_bytes`` in total, the memory bound), while the consumer parses; the network
and the parser overlap.

Parallel ranges (``ranges >= 2``): the thread instead fetches ``block_bytes`` blocks of the
object with ranged GETs, ``ranges`` of them at once, and hands them over in order (memory:
``read_ahead_bytes`` queued plus ``ranges`` blocks in flight). One TCP stream is then no
longer the limit when the machine is loaded. Every block's version tag (ETag) must equal the
first one's (and ``version`` when the caller gives it, e.g. from a shard's offsets index):
an object replaced while it is read fails at once with `ObjectChanged`. ``end`` stops the
stream early (a reader that needs only part of a shard). A sequential stream checks the
same with a HEAD when it opens and each time it resumes.

Faults: a connection error, a 5xx (surfacing as `StorageError` once botocore's own retries
are spent), or a body that ends before the object's size is a *transient* failure: the
thread waits ``backoff_s`` (doubling each consecutive failure, at most ``max_retries``
times in a row) and resumes with a ranged GET from the last byte it received, never from
the start. Missing objects and denied access fail at once. Failures that exhaust the
retries are raised to the consumer as `StreamError` naming the URI and the byte offset.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipeline.storage import ObjectNotFound, Storage, StorageError, is_s3

_EOF = object()
_PERMANENT = ("denied", "does not exist", "no such", "missing bucket", "credentials")


class StreamError(StorageError):
    """Reading an object failed for good (retries exhausted or a permanent error)."""


class ObjectChanged(StreamError):
    """The object's version (ETag) changed between two requests of one read."""


def _is_permanent(exc: BaseException) -> bool:
    """Not worth retrying: the object is missing or access is denied."""
    if isinstance(exc, ObjectNotFound):
        return True
    return isinstance(exc, StorageError) and any(p in str(exc).lower() for p in _PERMANENT)


def put_until_closed(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put `item` into the bounded queue `q`, waking every 0.1 s to notice `stop`; False when
    stopped first. The producer threads' way to block on backpressure without a hang."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class ReadAheadStream:
    """A file-like reader (``read(n)``, ``close()``) of ``uri`` from byte ``start``.

    Args:
        storage: where the object lives (S3 or local).
        uri: the object.
        start: first byte to deliver.
        read_ahead_bytes: bound on bytes buffered ahead of the consumer (>= one chunk).
        chunk_bytes: size of each network read.
        max_retries: consecutive failed attempts tolerated before giving up.
        backoff_s: wait before the first retry; doubles after each consecutive failure.
        ranges: parallel ranged GETs (1: one sequential GET, resumed by range on failure).
        block_bytes: size of each ranged GET (``ranges >= 2``).
        end: stop before this byte (None: the object's end).
        version: the version tag the object must have (None: the first one seen, which
            every later request or resume must then match).

    Attributes ``bytes_read`` (delivered by the network) and ``retries`` (resumptions) are
    updated by the background thread and may be read at any time.
    """

    def __init__(self, storage: Storage, uri: str, *, start: int = 0,
                 read_ahead_bytes: int = 16 * 2**20, chunk_bytes: int = 2**20,
                 max_retries: int = 5, backoff_s: float = 0.5, ranges: int = 1,
                 block_bytes: int = 4 * 2**20, end: int | None = None,
                 version: str | None = None) -> None:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"ReadAheadStream {uri}: bad byte range start={start} end={end}")
        if chunk_bytes < 1 or read_ahead_bytes < 1 or ranges < 1 or block_bytes < 1:
            raise ValueError(f"ReadAheadStream {uri}: chunk_bytes={chunk_bytes}, "
                             f"read_ahead_bytes={read_ahead_bytes}, ranges={ranges} and "
                             f"block_bytes={block_bytes} must be >= 1")
        self.storage, self.uri = storage, uri
        self.chunk_bytes = chunk_bytes if ranges == 1 else block_bytes
        self.ranges, self.end, self.version = ranges, end, version
        self.fetched_all = False  # the thread has fetched everything up to the end
        self._lock = threading.Lock()
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.bytes_read = 0
        self.retries = 0
        self.total_size: int | None = None
        self._pos = start  # next byte the thread fetches
        self._queue: queue.Queue[Any] = queue.Queue(
            max(1, read_ahead_bytes // self.chunk_bytes))
        self._stop = threading.Event()
        self._buf = b""
        self._off = 0
        self._done = False
        run = self._run if ranges == 1 else self._run_ranged
        self._thread = threading.Thread(target=run, name=f"read-ahead {uri}", daemon=True)
        self._thread.start()

    @property
    def position(self) -> int:
        """Offset of the next byte the network thread will fetch."""
        return self._pos

    # ------------------------------------------------------------------ producer thread

    def _put(self, item: Any) -> bool:
        """Queue `item`, waking up regularly to notice `close()`; False when closed."""
        return put_until_closed(self._queue, item, self._stop)

    def _run(self) -> None:
        failures = 0
        body: Any = None
        try:
            while not self._stop.is_set():
                try:
                    if body is None:
                        # (re)opening: the first open records the version (or checks the
                        # expected one), a resume after a failure checks it is the same object
                        now = self.storage.version(self.uri)
                        if now is None:
                            what = "object" if is_s3(self.uri) else "file"
                            raise ObjectNotFound(f"read {self.uri}: no such {what}")
                        self._check_version(now, None)
                        body, total = self.storage.get_stream(self.uri, self._pos)
                        self.total_size = total
                    stop = self._stop_at()
                    if self._pos >= stop:
                        self.fetched_all = True
                        self._put(_EOF)
                        return
                    data = body.read(min(self.chunk_bytes, stop - self._pos))
                    if not data:  # the body ended before the object did: truncated
                        raise StorageError(
                            f"read {self.uri}: body ended at byte {self._pos} of "
                            f"{self.total_size} (truncated response)")
                except ObjectChanged as exc:
                    self._put(exc)
                    return
                except Exception as exc:  # noqa: BLE001 - classified below
                    body = _close_quietly(body)
                    failures += 1
                    if _is_permanent(exc) or failures > self.max_retries:
                        why = "" if _is_permanent(exc) else f" after {failures - 1} retries"
                        self._put(StreamError(
                            f"read {self.uri} at byte {self._pos}{why}: "
                            f"{type(exc).__name__}: {exc}"))
                        return
                    self.retries += 1
                    if self._stop.wait(self.backoff_s * 2 ** (failures - 1)):
                        return
                    continue
                failures = 0
                self._pos += len(data)
                self.bytes_read += len(data)
                if not self._put(data):
                    return
        finally:
            _close_quietly(body)

    def _stop_at(self) -> int:
        total = self.total_size or 0
        return total if self.end is None else min(total, self.end)

    def _check_version(self, version: str, total: int | None, at: int = 0) -> None:
        """Record the first version/size seen; raise `ObjectChanged` when they differ later."""
        with self._lock:
            if self.version is None:
                self.version = version
            if self.total_size is None and total is not None:
                self.total_size = total
        if version != self.version or (total is not None and total != self.total_size):
            raise ObjectChanged(
                f"read {self.uri}: the object is not the one being read (version "
                f"{self.version} size {self.total_size}, now {version} size {total} at byte "
                f"{at}); the shard was rewritten: re-run `mocopipe shards write`/`index`")

    def _fetch_block(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) by one ranged GET, retried; checks the object's version."""
        failures = 0
        while True:
            try:
                data, total, version = self.storage.get_range(self.uri, start, stop)
                self._check_version(version, total, start)
                want = min(stop, total) - start
                if len(data) != want:
                    raise StorageError(f"read {self.uri}: {len(data)} of {want} bytes at byte "
                                       f"{start} (truncated response)")
                with self._lock:
                    self.bytes_read += len(data)
                return data
            except ObjectChanged:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                failures += 1
                if _is_permanent(exc) or failures > self.max_retries:
                    why = "" if _is_permanent(exc) else f" after {failures - 1} retries"
                    raise StreamError(f"read {self.uri} at byte {start}{why}: "
                                      f"{type(exc).__name__}: {exc}") from exc
                with self._lock:
                    self.retries += 1
                if self._stop.wait(self.backoff_s * 2 ** (failures - 1)):
                    raise StreamError(f"read {self.uri}: closed") from exc

    def _run_ranged(self) -> None:
        """Producer with ``ranges`` ranged GETs in flight, delivered in order."""
        pool = ThreadPoolExecutor(self.ranges, thread_name_prefix="range-get")
        pending: deque[Future[bytes]] = deque()
        try:
            if self.end is not None and self._pos >= self.end:
                self.fetched_all = True
                self._put(_EOF)
                return
            first_stop = self._pos + self.chunk_bytes
            if self.end is not None:
                first_stop = min(first_stop, self.end)
            if self.total_size is None and self._pos > 0:  # learn the size (and an empty tail)
                size = self.storage.size(self.uri)
                if size is not None and self._pos >= size:
                    self.total_size = size
                    self.fetched_all = True
                    self._put(_EOF)
                    return
            pending.append(pool.submit(self._fetch_block, self._pos, first_stop))
            ahead = first_stop
            while not self._stop.is_set():
                if not pending:
                    self.fetched_all = True
                    self._put(_EOF)
                    return
                data = pending[0].result()  # the first block also sets total_size
                pending.popleft()
                stop = self._stop_at()
                while len(pending) < self.ranges and ahead < stop:
                    nxt = min(ahead + self.chunk_bytes, stop)
                    pending.append(pool.submit(self._fetch_block, ahead, nxt))
                    ahead = nxt
                self._pos += len(data)
                if data and not self._put(data):
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc if isinstance(exc, StreamError) else StreamError(
                f"read {self.uri} at byte {self._pos}: {type(exc).__name__}: {exc}"))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ consumer side

    def _next_chunk(self) -> bool:
        """Load the next chunk into the buffer; False at the end of the object."""
        if self._done:
            return False
        item = self._queue.get()
        if item is _EOF:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._buf, self._off = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (fewer only at the end of the object); ``n < 0`` reads all."""
        if n is None or n < 0:
            parts = [self._buf[self._off:]]
            self._buf, self._off = b"", 0
            while self._next_chunk():
                parts.append(self._buf)
                self._buf, self._off = b"", 0
            return b"".join(parts)
        avail = len(self._buf) - self._off
        if avail >= n:  # the common case: one slice of the current chunk
            out = self._buf[self._off:self._off + n]
            self._off += n
            return out
        parts = [self._buf[self._off:]] if avail else []
        got = avail
        self._buf, self._off = b"", 0
        while got < n and self._next_chunk():
            take = min(n - got, len(self._buf))
            parts.append(self._buf[:take])
            self._off = take
            got += take
        return b"".join(parts)

    def skip(self, n: int) -> int:
        """Advance past up to `n` bytes without copying them; returns the number skipped."""
        left = n
        while left > 0:
            avail = len(self._buf) - self._off
            if avail == 0:
                if not self._next_chunk():
                    break
                continue
            step = min(avail, left)
            self._off += step
            left -= step
        return n - left

    def close(self) -> None:
        """Stop the thread (it closes the connection) and drop buffered chunks."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
        self._buf, self._off, self._done = b"", 0, True

    def __enter__(self) -> ReadAheadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_quietly(body: Any) -> None:
    if body is not None:
        try:
            body.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; ignore
            pass
    return None
