"""`shards check`: does storage hold exactly what the manifest promises?

For every shard listed in the manifest: it exists, its size and sha256 match, it is a readable
tar whose samples each hold one image member (and a valid ``cls`` when the dataset is
labelled), and the sample count matches. ``deep=True`` also decodes every image. Each shard
is streamed once (sha256 computed while the tar is parsed), `workers` shards at a time.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from webdataset.tariterators import base_plus_ext

from pipeline.ingest.tario import TarFormatError, iter_members
from pipeline.shards.manifest import (
    MANIFEST_NAME,
    SHARD_KEY,
    Manifest,
    ShardInfo,
    read_manifest,
    shard_uri,
)
from pipeline.shards.sources import IMAGE_EXTS, BadInput, validate_image
from pipeline.storage import Storage, StorageError, join

MAX_PER_SHARD = 5  # decode/sample problems listed per shard before summarising the rest


@dataclass
class Problem:
    shard: str
    kind: str  # missing | size | etag | sha256 | samples | tar | sample | label | decode | read
    detail: str


@dataclass
class CheckReport:
    dataset: str
    manifest: Manifest
    problems: list[Problem] = field(default_factory=list)
    samples_seen: int = 0
    images_decoded: int = 0
    unlisted: list[str] = field(default_factory=list)  # shard objects not in the manifest

    @property
    def ok(self) -> bool:
        return not self.problems


class _HashingReader:
    """Wraps a readable body; sha256 and byte count of everything read through it."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._body.read() if n is None or n < 0 else self._body.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def skip(self, n: int) -> int:
        """Read past `n` bytes (they still go through the hash); returns how many there were."""
        done = 0
        while done < n:
            got = len(self.read(min(n - done, 1 << 20)))
            if not got:
                break
            done += got
        return done

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class _ShardScan:
    """Per-shard state while its members stream by."""

    def __init__(self, info: ShardInfo, manifest: Manifest, deep: bool) -> None:
        self.info, self.manifest, self.deep = info, manifest, deep
        self.problems: list[Problem] = []
        self.samples = 0
        self.decoded = 0
        self._hidden = 0
        self._seen: set[str] = set()

    def problem(self, kind: str, detail: str, *, capped: bool = False) -> None:
        if capped and sum(p.kind in ("sample", "label", "decode") for p in self.problems) \
                >= MAX_PER_SHARD:
            self._hidden += 1
            return
        self.problems.append(Problem(self.info.key, kind, detail))

    def sample(self, key: str, members: dict[str, bytes]) -> None:
        if self.info.etag and not any(e in IMAGE_EXTS for e in members):
            return  # an indexed corpus: samples without an image are not counted (no_image)
        self.samples += 1
        if key in self._seen:
            self.problem("sample", f"key {key!r} appears twice", capped=True)
        self._seen.add(key)
        images = [e for e in members if e in IMAGE_EXTS]
        if len(images) != 1:
            self.problem("sample", f"{key}: {len(images)} image members "
                                   f"({', '.join(sorted(members))})", capped=True)
        if self.manifest.labelled:
            raw = members.get("cls")
            try:
                label = int(raw.decode("ascii")) if raw is not None else None
            except (UnicodeDecodeError, ValueError):
                label = -1
            if label is None or not 0 <= label < len(self.manifest.classes):
                self.problem("label", f"{key}: cls {raw!r} is not in [0, "
                                      f"{len(self.manifest.classes)})", capped=True)
        if self.deep:
            for ext in images:
                try:
                    validate_image(members[ext], ext)
                    self.decoded += 1
                except BadInput as exc:
                    self.problem("decode", f"{key}.{ext}: {exc}", capped=True)

    def finish(self) -> None:
        if self._hidden:
            self.problems.append(Problem(self.info.key, "more",
                                         f"{self._hidden} more sample problems not listed"))


def check_shard(storage: Storage, dataset_uri: str, info: ShardInfo, manifest: Manifest,
                deep: bool = False) -> tuple[list[Problem], int, int]:
    """Check one shard -> (problems, samples seen, images decoded)."""
    uri = shard_uri(dataset_uri, info.key)
    scan = _ShardScan(info, manifest, deep)
    try:
        size = storage.size(uri)
        if size is None:
            return [Problem(info.key, "missing", f"{uri} does not exist")], 0, 0
        if size != info.bytes:
            scan.problem("size", f"{size} bytes stored, manifest says {info.bytes}")
        if info.etag:
            from pipeline.shards.index import object_etag

            etag = object_etag(storage, uri)
            if etag != info.etag:
                scan.problem("etag", f"changed since indexed: ETag {etag}, manifest "
                                     f"{info.etag} (re-run `mocopipe shards index`)")
        body, _ = storage.get_stream(uri)
        try:
            reader = _HashingReader(body)
            _scan_tar(reader, scan)
            reader.drain()
        finally:
            body.close()
    except StorageError as exc:
        return scan.problems + [Problem(info.key, "read", str(exc))], scan.samples, scan.decoded
    if info.sha256 and reader.sha.hexdigest() != info.sha256:
        scan.problem("sha256", f"stored {reader.sha.hexdigest()[:16]}..., manifest "
                               f"{info.sha256[:16]}...")
    if scan.samples != info.samples:
        scan.problem("samples", f"{scan.samples} samples in the tar, manifest says "
                                f"{info.samples}")
    scan.finish()
    return scan.problems, scan.samples, scan.decoded


def _scan_tar(reader: _HashingReader, scan: _ShardScan) -> None:
    """Stream the tar through THE tar parser (`pipeline.ingest.tario`, the readers' own),
    grouping consecutive members by key (webdataset's rule) into samples."""
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        for name, data in iter_members(reader):
            k, ext = base_plus_ext(name)
            if k is None:
                scan.problem("sample", f"member {name!r} has no extension", capped=True)
                continue
            if k != key and key is not None:
                scan.sample(key, members)
                members = {}
            key = k
            members[ext.lower()] = data or b""
    except (TarFormatError, OSError) as exc:
        scan.problem("tar", f"unreadable tar: {type(exc).__name__}: {exc}")
        return
    if key is not None:
        scan.sample(key, members)


def check_dataset(storage: Storage, dataset_uri: str, *, deep: bool = False,
                  workers: int = 4) -> CheckReport:
    """Check every shard the manifest lists; a missing/invalid manifest is a ManifestError."""
    manifest = read_manifest(storage, dataset_uri)
    report = CheckReport(dataset=dataset_uri, manifest=manifest)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="shards-check") as pool:
        results = list(pool.map(lambda s: check_shard(storage, dataset_uri, s, manifest, deep),
                                manifest.shards))
    for problems, samples, decoded in results:
        report.problems.extend(problems)
        report.samples_seen += samples
        report.images_decoded += decoded
    listed = {s.key for s in manifest.shards}
    prefix = join(dataset_uri, "x")[:-1]  # "s3://b/ds/" or "/path/ds/"
    for uri in storage.list(dataset_uri):
        name = uri.removeprefix(prefix)
        if SHARD_KEY.match(name) and name not in listed and name != MANIFEST_NAME:
            report.unlisted.append(name)
    return report
