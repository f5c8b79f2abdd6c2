"""A resumable read-ahead byte stream over one object (`Storage.get_stream`).

Why: a tar parser reading a boto3 body directly alternates small socket reads with Python
parsing on one thread, and reaches well under half of a raw GET's throughput. Here a
background thread does large reads (``chunk_bytes``, default 1 MiB) into a bounded queue
(``read_ahead_bytes`` in total, the memory bound), while the consumer parses; the network
and the parser overlap.

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
from typing import Any

from pipeline.storage import ObjectNotFound, Storage, StorageError

_EOF = object()
_PERMANENT = ("denied", "does not exist", "no such", "missing bucket", "credentials")


class StreamError(StorageError):
    """Reading an object failed for good (retries exhausted or a permanent error)."""


def _is_permanent(exc: BaseException) -> bool:
    """Not worth retrying: the object is missing or access is denied."""
    if isinstance(exc, ObjectNotFound):
        return True
    return isinstance(exc, StorageError) and any(p in str(exc).lower() for p in _PERMANENT)


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

    Attributes ``bytes_read`` (delivered by the network) and ``retries`` (resumptions) are
    updated by the background thread and may be read at any time.
    """

    def __init__(self, storage: Storage, uri: str, *, start: int = 0,
                 read_ahead_bytes: int = 16 * 2**20, chunk_bytes: int = 2**20,
                 max_retries: int = 5, backoff_s: float = 0.5) -> None:
        if start < 0:
            raise ValueError(f"ReadAheadStream {uri}: start={start} must be >= 0")
        if chunk_bytes < 1 or read_ahead_bytes < 1:
            raise ValueError(f"ReadAheadStream {uri}: chunk_bytes={chunk_bytes} and "
                             f"read_ahead_bytes={read_ahead_bytes} must be >= 1")
        self.storage, self.uri = storage, uri
        self.chunk_bytes = chunk_bytes
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.bytes_read = 0
        self.retries = 0
        self.total_size: int | None = None
        self._pos = start  # next byte the thread fetches
        self._queue: queue.Queue[Any] = queue.Queue(max(1, read_ahead_bytes // chunk_bytes))
        self._stop = threading.Event()
        self._buf = b""
        self._off = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name=f"read-ahead {uri}", daemon=True)
        self._thread.start()

    @property
    def position(self) -> int:
        """Offset of the next byte the network thread will fetch."""
        return self._pos

    # ------------------------------------------------------------------ producer thread

    def _put(self, item: Any) -> bool:
        """Queue `item`, waking up regularly to notice `close()`; False when closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        failures = 0
        body: Any = None
        try:
            while not self._stop.is_set():
                try:
                    if body is None:
                        body, total = self.storage.get_stream(self.uri, self._pos)
                        self.total_size = total
                    if self._pos >= (self.total_size or 0):
                        self._put(_EOF)
                        return
                    data = body.read(self.chunk_bytes)
                    if not data:  # the body ended before the object did: truncated
                        raise StorageError(
                            f"read {self.uri}: body ended at byte {self._pos} of "
                            f"{self.total_size} (truncated response)")
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
