"""Object storage: one interface, two backends, chosen per URI.

``Storage(cfg)`` is what every caller holds. Each call picks the backend from the URI once:
``s3://bucket/key`` -> `S3Backend` (boto3; credentials from boto3's default chain, see
`pipeline.storage.s3`), a local path -> `LocalBackend` (atomic writes), anything else with a
``scheme://`` -> StorageError. One Storage serves both kinds of URI (a job reads shards from S3
and writes a report to a local folder), so it holds one backend of each, the S3 one built on
first use. Storage pickles without its boto3 client (Ray actors receive it and rebuild the
client in their own process, from their own credential chain).

Every failure that reaches the caller is a StorageError naming the URI (and, for S3, the
endpoint): ObjectNotFound, TransientStorageError (a broken response body), PreconditionFailed
(a conditional write lost, see `put_bytes`).
"""

from __future__ import annotations

from typing import Any

from pipeline.config import StorageConfig
from pipeline.storage.base import (
    Backend,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    TransientStorageError,
    check_uri,
    is_s3,
    join,
    split_s3,
)
from pipeline.storage.local import LocalBackend
from pipeline.storage.s3 import S3Backend

__all__ = [
    "Backend",
    "ObjectInfo",
    "ObjectNotFound",
    "PreconditionFailed",
    "Storage",
    "StorageError",
    "TransientStorageError",
    "check_uri",
    "is_s3",
    "join",
    "split_s3",
]


class Storage:
    """Reads and writes objects on S3 or local disk. Thread-safe; picklable."""

    def __init__(self, cfg: StorageConfig | None = None) -> None:
        self.cfg = cfg or StorageConfig()
        self._s3 = S3Backend(self.cfg)
        self._local = LocalBackend()

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Storage.__init__(self, state["cfg"])

    def backend(self, uri: str) -> Backend:
        """The backend for `uri`; StorageError for a scheme other than s3://."""
        check_uri(uri)
        return self._s3 if is_s3(uri) else self._local

    @property
    def endpoint(self) -> str:
        """The S3 endpoint in use (for messages); "AWS default" when none is configured."""
        return self._s3.endpoint

    @property
    def client(self) -> Any:
        """The boto3 S3 client (for tools that need raw S3 calls, e.g. benchmarks)."""
        return self._s3.client

    # ------------------------------------------------------------------ API

    def check_access(self, uri: str) -> None:
        """Fail early: no credentials / wrong credentials / missing bucket / no server ->
        StorageError. Local: the nearest existing ancestor must be a directory."""
        self.backend(uri).check_access(uri)

    def put_bytes(self, uri: str, data: bytes, *, if_match: str | None = None,
                  if_none_match: bool = False) -> str:
        """Write `data` whole (never visible half-written); return the new ETag.

        ``if_match=etag``: replace only if the object is still that version (from `head`);
        ``if_none_match=True``: create only if it does not exist. When the condition does
        not hold, PreconditionFailed is raised and nothing is written. (On S3, a request
        retried after a lost response can report PreconditionFailed although its first
        attempt landed: a compare-and-swap loop re-reads before concluding it lost.)
        """
        return self.backend(uri).put_bytes(uri, data, if_match=if_match,
                                           if_none_match=if_none_match)

    def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None, *,
                 if_none_match: bool = False) -> None:
        """Upload a local file (multipart above storage.multipart_threshold_mb).

        `metadata` (S3 only: user metadata, x-amz-meta-*) is returned by `metadata(uri)`.
        ``if_none_match=True``: create only if no object has that name, else
        PreconditionFailed and nothing is written (the same caveat as `put_bytes` for a
        retried request).
        """
        if if_none_match:
            self.backend(uri).put_file(uri, path, metadata, if_none_match=True)
        else:
            self.backend(uri).put_file(uri, path, metadata)

    def get_bytes(self, uri: str, start: int = 0, end: int | None = None, *,
                  if_match: str | None = None) -> bytes:
        """Bytes [start, end) of the object (end=None: to the end). With `if_match`, only
        from that version of the object (from `head`), else PreconditionFailed."""
        if if_match is None:  # keeps the positional signature subclasses override
            return self.backend(uri).get_bytes(uri, start, end)
        return self.backend(uri).get_bytes(uri, start, end, if_match=if_match)

    def get_stream(self, uri: str, start: int = 0, *,
                   if_match: str | None = None) -> tuple[Any, int]:
        """Open the object for sequential reading from byte `start`.

        Returns ``(body, total_size)``: `body` has ``.read(n)`` and ``.close()`` (a boto3
        StreamingBody or a local file object positioned at `start`); `total_size` is the size
        of the whole object, so ``total_size - start`` bytes remain. With `if_match` (an ETag
        from `head`), a stream resumed by range fails with PreconditionFailed if the object
        was replaced meanwhile, instead of splicing bytes of two versions.
        """
        if if_match is None:
            return self.backend(uri).get_stream(uri, start)
        return self.backend(uri).get_stream(uri, start, if_match=if_match)

    def head(self, uri: str) -> ObjectInfo | None:
        """Size, ETag and user metadata of the object; None when it does not exist."""
        return self.backend(uri).head(uri)

    def get_range(self, uri: str, start: int, end: int) -> tuple[bytes, int, str]:
        """One attempt at bytes [start, end) (clipped to the object's end), no retries.

        Returns ``(data, total_size, version)``; `version` is the object's ETag (`head`), so a
        caller reading one object in several requests can tell that it changed.
        """
        if start < 0 or end <= start:
            raise ValueError(f"get_range {uri}: bad range start={start} end={end}")
        return self.backend(uri).get_range(uri, start, end)

    def version(self, uri: str) -> str | None:
        """The object's ETag as `get_range` reports it; None when it does not exist."""
        info = self.head(uri)
        return None if info is None else info.etag

    def exists(self, uri: str) -> bool:
        return self.head(uri) is not None

    def size(self, uri: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""
        info = self.head(uri)
        return None if info is None else info.size

    def metadata(self, uri: str) -> dict[str, str] | None:
        """S3 user metadata of the object ({} for local files); None when it does not exist."""
        info = self.head(uri)
        return None if info is None else info.metadata

    def list(self, prefix_uri: str) -> list[str]:
        """Every object under the "folder" `prefix_uri` (recursive), as full URIs, sorted."""
        return self.backend(prefix_uri).list(prefix_uri)

    def list_info(self, prefix_uri: str) -> list[tuple[str, ObjectInfo]]:
        """`list` with each object's size and ETag: one listing, no HEAD per object on S3."""
        return self.backend(prefix_uri).list_info(prefix_uri)

    def delete(self, uri: str) -> None:
        """Remove the object; a missing object is not an error."""
        self.backend(uri).delete(uri)
