"""The object-storage interface both backends implement, its errors, and URI helpers.

A URI is ``s3://bucket/key...`` (the S3 backend) or a local path (the filesystem backend).
Any other ``scheme://`` (gs://, az://, http://, file://) is refused with a StorageError:
it is never silently taken for a relative local path. An ``s3://`` URI never goes through
``pathlib`` or ``os.path``.

Versions: every object has an ETag (S3: the server's, quoted; local: derived from inode,
mtime and size). `head` returns it; conditional writes take it back:
``put_bytes(uri, data, if_match=etag)`` replaces the object only if it is still that version,
``put_bytes(uri, data, if_none_match=True)`` creates it only if it does not exist; the loser
gets PreconditionFailed and nothing is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

_S3 = "s3://"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the cause."""


class ObjectNotFound(StorageError):
    """The object (or local file) does not exist."""


class TransientStorageError(StorageError):
    """The connection broke while a response was read (timeout, reset, short body): worth
    retrying. `get_bytes` retries these itself; stream readers can catch it and reopen."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object is no longer the version named by `if_match`
    (changed or deleted), or it exists although `if_none_match` asked it not to."""


@dataclass(frozen=True)
class ObjectInfo:
    """What `head` knows of one object."""

    size: int  # bytes
    etag: str  # opaque version id: pass it back as `if_match`
    metadata: dict[str, str] = field(default_factory=dict)  # S3 user metadata, lower-case keys


def is_s3(uri: str) -> bool:
    return uri.startswith(_S3)


def check_uri(uri: str) -> None:
    """Raise StorageError unless `uri` is ``s3://...`` or a local path."""
    m = _SCHEME.match(uri)
    if m and not is_s3(uri):
        raise StorageError(
            f"{uri!r}: unsupported URI scheme {m.group(0)!r}; storage takes "
            f"s3://bucket/prefix (any S3-compatible store via storage.endpoint_url) or a "
            f"local path")


def split_s3(uri: str) -> tuple[str, str]:
    """``"s3://b/p/x"`` -> ``("b", "p/x")``. Raises StorageError for a URI without a bucket."""
    if not is_s3(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI")
    rest = uri[len(_S3):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: missing bucket name (expected s3://bucket/prefix)")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/p", "x") -> "s3://b/p/x"``; local paths use ``os.path.join``."""
    if not is_s3(uri):
        return os.path.join(uri, *parts)
    out = uri.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def check_range(uri: str, start: int, end: int | None) -> None:
    """ValueError for a byte range [start, end) that cannot be read."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"get_bytes {uri}: bad range start={start} end={end}")


def check_condition(uri: str, if_match: str | None, if_none_match: bool) -> None:
    """ValueError when a write asks for both conditions, or for an empty ETag."""
    if if_match is not None and if_none_match:
        raise ValueError(f"put_bytes {uri}: pass if_match or if_none_match, not both")
    if if_match is not None and not if_match:
        raise ValueError(f"put_bytes {uri}: if_match must be an ETag from head(), got ''")


class Backend(Protocol):
    """One storage system. `Storage` picks the backend per URI and delegates to it."""

    @property
    def credential_source(self) -> str:
        """S3: where boto3's chain found the credentials ("env", "iam-role", ...); local: ""."""

    def check_access(self, uri: str) -> None:
        """Fail early (StorageError) if `uri` cannot be written: no credentials, access
        denied, missing bucket, unreachable server, a file where a folder should be."""

    def put_bytes(self, uri: str, data: bytes, *, if_match: str | None = None,
                  if_none_match: bool = False) -> str:
        """Write `data` whole (readers never see a partial object); return the new ETag.
        Conditional (see module doc): PreconditionFailed when the condition does not hold."""

    def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None, *,
                 if_none_match: bool = False) -> None:
        """Upload the local file `path` (S3: multipart above the configured threshold);
        `if_none_match`: create only, else PreconditionFailed (see module doc)."""

    def get_bytes(self, uri: str, start: int = 0, end: int | None = None, *,
                  if_match: str | None = None) -> bytes:
        """Bytes [start, end) of the object (end=None: to the end); ObjectNotFound;
        PreconditionFailed when `if_match` is not the object's current ETag."""

    def get_stream(self, uri: str, start: int = 0, *,
                   if_match: str | None = None) -> tuple[Any, int]:
        """``(body, total_size)``: `body` reads sequentially from byte `start`; `if_match`
        as in `get_bytes`."""

    def get_range(self, uri: str, start: int, end: int) -> tuple[bytes, int, str]:
        """``(bytes [start, end) clipped to the end, total_size, ETag)`` in one attempt."""

    def head(self, uri: str) -> ObjectInfo | None:
        """Size, ETag and metadata of the object; None when it does not exist."""

    def list(self, prefix_uri: str) -> list[str]:
        """Every object under the folder `prefix_uri` (recursive), full URIs, sorted."""

    def list_info(self, prefix_uri: str) -> list[tuple[str, ObjectInfo]]:
        """`list`, with each object's size and ETag (from the listing itself on S3)."""

    def delete(self, uri: str) -> None:
        """Remove the object; a missing object is not an error."""
