"""Storage plumbing of `shards index`: find the tars of a source, their ETags, and read one
tar body as the byte source THE tar parser (`pipeline.ingest.tario`) expects.

ETags: S3's ETag (as listed / HEAD), quotes included. A local file has none; its stand-in is
``"<mtime_ns hex>-<size hex>"`` (changes whenever the file is rewritten).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from pipeline.storage import Storage, is_s3

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardRef:
    """One tar to index: full URI, size in bytes (-1 = unknown yet), ETag ("" = unknown)."""

    uri: str
    size: int = -1
    etag: str = ""


def is_brace_pattern(source: str) -> bool:
    return "{" in source and "}" in source


def source_folder(source: str) -> str:
    """The folder a source lives in (where its default manifest goes): a brace pattern's
    folder before its first ``{``, a prefix or local folder itself."""
    if is_brace_pattern(source):
        head = source[:source.index("{")]
        return head.rsplit("/", 1)[0] if "/" in head else "."
    return source.rstrip("/") if is_s3(source) else os.path.abspath(source)


def object_etag(storage: Storage, uri: str) -> str | None:
    """The object's ETag (the local backend's stand-in for files), or None when it is absent."""
    info = storage.head(uri)
    return None if info is None else info.etag


def list_shards(storage: Storage, source: str) -> list[ShardRef]:
    """The ``.tar`` objects of `source`, sorted by URI.

    `source`: a brace pattern (expanded as webdataset does; every name must exist), an
    ``s3://`` prefix (recursive listing, size and ETag from the listing) or a local folder.
    Other objects (parquet side files, manifests) are ignored.
    """
    if is_brace_pattern(source):
        from braceexpand import braceexpand

        refs = []
        for uri in braceexpand(source):
            etag = object_etag(storage, uri)
            if etag is None:
                raise ValueError(f"{source}: {uri} does not exist")
            refs.append(ShardRef(uri, -1, etag))
        return sorted(refs, key=lambda r: r.uri)
    if is_s3(source) or os.path.isdir(source):
        return [ShardRef(uri if is_s3(uri) else os.path.abspath(uri), info.size, info.etag)
                for uri, info in storage.list_info(source) if uri.endswith(".tar")]
    raise ValueError(f"{source}: not an s3:// prefix, a brace pattern or a local folder")


class TarBodySource:
    """``read(n)`` / ``skip(n)`` over a response body (or file), for `tario.iter_members`.

    With ``hash_all`` every byte (skipped ones too) goes through sha256; otherwise skipped
    bytes of a seekable file are seeked over and those of a network body read and dropped.
    """

    def __init__(self, body: Any, *, hash_all: bool) -> None:
        self._body = body
        self._sha = hashlib.sha256() if hash_all else None
        self._seek = self._sha is None and callable(getattr(body, "seek", None)) \
            and getattr(body, "seekable", lambda: False)()

    def read(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            data = self._body.read(n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._sha is not None:
            self._sha.update(out)
        return out

    def skip(self, n: int) -> int:
        if n <= 0:
            return 0
        if self._seek:
            here = self._body.tell()
            end = self._body.seek(0, os.SEEK_END)
            return self._body.seek(min(here + n, end)) - here
        done = 0
        while done < n:
            data = self.read(min(_CHUNK, n - done))
            if not data:
                break
            done += len(data)
        return done

    def drain(self) -> None:
        """Read to the end (so the sha256 covers the whole object)."""
        if self._sha is not None:
            while self.read(_CHUNK):
                pass

    def hexdigest(self) -> str:
        return self._sha.hexdigest() if self._sha is not None else ""
