"""The dataset manifest: the only list of shards readers trust.

Layout: ``DATASET/shard-000000.tar ...`` + ``DATASET/manifest.json``. The writer uploads
every shard first and writes the manifest last (atomically), so a crash never exposes a
partial shard. `Manifest.sha256` (of `to_json()`) is the MLflow tag ``mocopipe.manifest_sha``.

A dataset is named either by its folder (``s3://b/ds`` -> ``s3://b/ds/manifest.json``) or by
the URI of a manifest file (anything ending in ``.json``, e.g. an index written by
`mocopipe shards index --manifest s3://work/laion.json`). A shard key is relative to the
manifest's folder, or the shard's full URI (``s3://...`` or an absolute local path) when the
shards live elsewhere (`shard_uri` resolves both). Indexed shards carry their ETag, image
formats and image-less samples; their sha256 is "" unless the index was asked for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline.storage import ObjectNotFound, Storage, join

FORMAT_VERSION = 1  # the in-memory layout; also the indented JSON form on storage
COMPACT_VERSION = 2  # columnar, unindented JSON: manifests of COMPACT_MIN_SHARDS shards or more
COMPACT_MIN_SHARDS = 10_000
_COLUMNS = ("key", "samples", "bytes", "sha256", "added_at", "etag", "formats", "no_image")
MANIFEST_NAME = "manifest.json"
SHARD_KEY = re.compile(r"^shard-(\d{6,})(?:-[0-9a-f]{12})?\.tar$")


class ManifestError(ValueError):
    """A missing, unreadable or inconsistent manifest; the message names the dataset."""


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic GC while a block allocates millions of acyclic objects (parsing or
    planning a million shards: each GC pass walks them all); restores the previous state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def utc_now() -> str:
    """Current time as ISO-8601 UTC with microseconds, e.g. ``2026-11-27T21:55:22.123456Z``
    (fixed width, so later times also sort later as strings)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def shard_key(index: int, sha256: str = "") -> str:
    """``3 -> "shard-000003.tar"``; with the shard's sha256 ``"shard-000003-0a1b2c3d4e5f.tar"``
    (appends and rewrites: a name no other writer's different bytes can take)."""
    return f"shard-{index:06d}-{sha256[:12]}.tar" if sha256 else f"shard-{index:06d}.tar"


@dataclass(slots=True)
class ShardInfo:
    key: str  # "shard-000000.tar" relative to the manifest's folder, or a full URI
    samples: int  # samples with an image member (the readers' member indices)
    bytes: int
    sha256: str  # "" when not computed (`shards index` without --sha256)
    added_at: str  # ISO-8601 UTC
    etag: str = ""  # storage ETag when indexed ("" = not recorded); `shards check` compares
    formats: list[str] = field(default_factory=list)  # image extensions seen, sorted
    no_image: int = 0  # samples without an image member (skipped by the readers)


_OPTIONAL = {"etag": "", "formats": [], "no_image": 0}


def is_manifest_file(uri: str) -> bool:
    """True when `uri` names a manifest file (``*.json``) rather than a dataset folder."""
    return uri.rstrip("/").endswith(".json")


def manifest_uri(dataset_uri: str) -> str:
    """``s3://b/ds -> s3://b/ds/manifest.json``; a ``*.json`` URI is returned unchanged."""
    if not dataset_uri:
        raise ManifestError("dataset URI is empty (name a dataset folder or a manifest .json)")
    return dataset_uri if is_manifest_file(dataset_uri) else join(dataset_uri, MANIFEST_NAME)


def is_absolute_key(key: str) -> bool:
    """A shard key that is a full location (``s3://...`` or an absolute local path)."""
    return key.startswith(("s3://", "/"))


def shard_uri(dataset_uri: str, key: str) -> str:
    """Where shard `key` of the dataset named `dataset_uri` (folder or manifest file) lives."""
    if is_absolute_key(key):
        return key
    if is_manifest_file(dataset_uri):
        base = dataset_uri.rstrip("/").rsplit("/", 1)[0] if "/" in dataset_uri else "."
        return join(base, key)
    return join(dataset_uri, key)


@dataclass
class Manifest:
    format_version: int
    dataset: str
    shards: list[ShardInfo]
    total_samples: int
    total_bytes: int
    labelled: bool
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"input": ..., "reason": ...}
    created_at: str = ""
    updated_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; optional shard fields at their defaults are left out, so a
        manifest without indexed shards serialises exactly as before they existed."""
        raw = dataclasses.asdict(self)
        raw["shards"] = [{k: v for k, v in s.items() if k not in _OPTIONAL or v != _OPTIONAL[k]}
                         for s in raw["shards"]]
        return raw

    def to_json(self) -> str:
        """Stable JSON (fixed field order, 2-space indent, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "manifest") -> Manifest:
        """Parse and validate. Raises ManifestError naming `source` and the bad field."""
        with paused_gc():  # a million shards are millions of objects: no GC passes meanwhile
            return cls._from_json(text, source)

    @classmethod
    def _from_json(cls, text: str, source: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        version = raw.get("format_version")
        if version == COMPACT_VERSION:
            raw = {**raw, "format_version": FORMAT_VERSION,
                   "shards": _rows(raw.get("shards"), f"{source}: shards")}
        elif version != FORMAT_VERSION:
            raise ManifestError(f"{source}: format_version {version!r} is not supported "
                                f"(this mocopipe reads versions {FORMAT_VERSION} and "
                                f"{COMPACT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(raw) - {"skipped", "created_at", "updated_at"})
        if missing:
            raise ManifestError(f"{source}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ManifestError(f"{source}: unknown field(s) {', '.join(unknown)}")
        shards = raw["shards"]
        if not isinstance(shards, list):
            raise ManifestError(f"{source}: shards must be a list")
        infos = shards if version == COMPACT_VERSION else \
            [_shard_info(s, f"{source}: shards[{i}]") for i, s in enumerate(shards)]
        manifest = cls(**{**raw, "shards": infos})
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest") -> None:
        """Totals match the shard list, keys unique, classes present iff labelled."""
        keys = [s.key for s in self.shards]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ManifestError(f"{source}: duplicate shard key(s) {', '.join(dup)}")
        total = sum(s.samples for s in self.shards)
        if total != self.total_samples:
            raise ManifestError(f"{source}: total_samples {self.total_samples} != sum of shard "
                                f"samples {total}")
        size = sum(s.bytes for s in self.shards)
        if size != self.total_bytes:
            raise ManifestError(f"{source}: total_bytes {self.total_bytes} != sum of shard "
                                f"bytes {size}")
        if not isinstance(self.labelled, bool):
            raise ManifestError(f"{source}: labelled must be true or false")
        if not isinstance(self.classes, list) or not all(isinstance(c, str) for c in self.classes):
            raise ManifestError(f"{source}: classes must be a list of strings")
        if self.labelled and not self.classes:
            raise ManifestError(f"{source}: labelled dataset without classes")

    @property
    def sha256(self) -> str:
        """sha256 hex digest of `manifest_bytes(self)` (the run tag ``mocopipe.manifest_sha``;
        below COMPACT_MIN_SHARDS shards that is `to_json()`)."""
        return hashlib.sha256(manifest_bytes(self)).hexdigest()

    def shard_counts(self) -> list[tuple[str, int]]:
        """``[(shard key, samples)]`` in manifest order (the epoch plan's input)."""
        return [(s.key, s.samples) for s in self.shards]

    def next_shard_index(self) -> int:
        """One past the highest ``shard-NNNNNN.tar`` index (0 for an empty dataset)."""
        indices = [int(m.group(1)) for s in self.shards if (m := SHARD_KEY.match(s.key))]
        return max(indices, default=-1) + 1


def manifest_bytes(manifest: Manifest, *, compact: bool | None = None) -> bytes:
    """The stored form: `to_json()` (format 1), or with ``compact`` (default: from
    COMPACT_MIN_SHARDS shards on) format 2, one column per shard field and no indentation,
    about 3x smaller and several times faster to read at a million shards."""
    if compact is None:
        compact = len(manifest.shards) >= COMPACT_MIN_SHARDS
    if not compact:
        return manifest.to_json().encode("utf-8")
    raw = dataclasses.asdict(dataclasses.replace(manifest, shards=[]))
    raw["format_version"] = COMPACT_VERSION
    raw["shards"] = {c: [getattr(s, c) for s in manifest.shards] for c in _COLUMNS}
    return (json.dumps(raw, separators=(",", ":")) + "\n").encode("utf-8")


def _rows(columns: Any, where: str) -> list[ShardInfo]:
    """Format 2's columns -> validated ShardInfo rows (column-wise checks: fast at 1M)."""
    if not isinstance(columns, dict) or set(columns) != set(_COLUMNS):
        raise ManifestError(f"{where}: expected the columns {', '.join(_COLUMNS)}")
    n = len(columns["key"])
    for name, tp in zip(_COLUMNS, (str, int, int, str, str, str, list, int)):
        col = columns[name]
        if not isinstance(col, list) or len(col) != n:
            raise ManifestError(f"{where}.{name}: expected a list of {n} values")
        if not set(map(type, col)) <= {tp}:  # one C-level pass; find the culprit only if bad
            bad = next(i for i, v in enumerate(col) if type(v) is not tp)
            raise ManifestError(f"{where}.{name}[{bad}]: {col[bad]!r} is not a {tp.__name__}")
    for i, key in enumerate(columns["key"]):
        if not key.endswith(".tar") or "/.." in key or key.startswith(".."):
            _shard_info({c: columns[c][i] for c in _COLUMNS}, f"{where}[{i}]")  # raises
    if min(columns["samples"], default=0) < 0 or min(columns["bytes"], default=0) < 0 \
            or min(columns["no_image"], default=0) < 0:
        raise ManifestError(f"{where}: negative samples/bytes/no_image")
    sha = re.compile(r"[0-9a-f]{64}")
    for i, digest in enumerate(columns["sha256"]):
        if digest and not sha.fullmatch(digest):
            raise ManifestError(f"{where}.sha256[{i}]: {digest!r} is not a sha256 hex digest")
    seen: dict[str, str] = {}  # few distinct times: share the strings (memory at 1M)
    columns["added_at"] = [seen.setdefault(v, v) for v in columns["added_at"]]
    return [ShardInfo(*row) for row in zip(*(columns[c] for c in _COLUMNS))]


def _shard_info(raw: Any, where: str) -> ShardInfo:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected an object")
    spec: dict[str, type] = {"key": str, "samples": int, "bytes": int, "sha256": str,
                             "added_at": str, "etag": str, "formats": list, "no_image": int}
    required = set(spec) - set(_OPTIONAL)
    if not required <= set(raw) <= set(spec):
        raise ManifestError(f"{where}: expected fields {', '.join(spec)} (the last "
                            f"{len(_OPTIONAL)} optional), got {', '.join(raw)}")
    for name, value in raw.items():
        tp = spec[name]
        if not isinstance(value, tp) or isinstance(value, bool):
            raise ManifestError(f"{where}.{name}: {value!r} is not a {tp.__name__}")
    info = ShardInfo(**raw)
    if not all(isinstance(f, str) for f in info.formats):
        raise ManifestError(f"{where}.formats: {info.formats!r} must be a list of strings")
    if not info.key.endswith(".tar") or ".." in info.key.split("/") \
            or (not is_absolute_key(info.key) and info.key.startswith("/")):
        raise ManifestError(f"{where}.key: {info.key!r} must be a .tar path under the "
                            f"manifest's folder or a full s3:// / absolute URI")
    if info.samples < 0 or info.bytes < 0 or info.no_image < 0:
        raise ManifestError(f"{where}: negative samples/bytes/no_image")
    if info.sha256 and not re.fullmatch(r"[0-9a-f]{64}", info.sha256):
        raise ManifestError(f"{where}.sha256: {info.sha256!r} is not a sha256 hex digest")
    return info


def read_manifest(storage: Storage, dataset_uri: str) -> Manifest:
    """Read ``DATASET/manifest.json`` (or the manifest file `dataset_uri` itself when it ends
    in ``.json``); ManifestError when it is missing or invalid."""
    uri = manifest_uri(dataset_uri)
    try:
        text = storage.get_bytes(uri).decode("utf-8")
    except ObjectNotFound as exc:
        if is_manifest_file(dataset_uri):
            raise ManifestError(f"{uri}: no such manifest file") from exc
        raise ManifestError(f"{dataset_uri}: no {MANIFEST_NAME} (not a mocopipe dataset, or "
                            f"`mocopipe shards write` / `shards index` has not finished)") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{uri}: not UTF-8 text") from exc
    return Manifest.from_json(text, source=uri)


def write_manifest(storage: Storage, dataset_uri: str, manifest: Manifest) -> None:
    """Validate, then write ``DATASET/manifest.json`` atomically (one PUT / os.replace)."""
    manifest.validate(manifest_uri(dataset_uri))
    storage.put_bytes(manifest_uri(dataset_uri), manifest_bytes(manifest))


class ManifestConflict(ManifestError):
    """Another writer replaced the manifest since it was read (lost compare-and-swap race)."""


def swap_manifest(storage: Storage, dataset_uri: str, manifest: Manifest, *,
                  expect_etag: str | None) -> None:
    """Write the manifest only if it is still the one read (compare-and-swap).

    `expect_etag`: the ETag of the manifest this one replaces (from
    `pipeline.shards.indexio.object_etag`), None when the manifest must not exist yet. S3:
    one conditional PUT (``If-Match`` / ``If-None-Match: *``), atomic on the server (SeaweedFS
    honours both). Local: the local backend's conditional write (a lock on the folder around
    check + atomic replace). Both through `Storage.put_bytes(if_match=, if_none_match=)`.

    Raises:
        ManifestConflict: the manifest changed (or appeared) since it was read; nothing was
            written. Re-reading it and merging again is safe.
    """
    from pipeline.storage import PreconditionFailed

    uri = manifest_uri(dataset_uri)
    manifest.validate(uri)
    body = manifest_bytes(manifest)
    try:
        storage.put_bytes(uri, body, if_match=expect_etag, if_none_match=expect_etag is None)
    except PreconditionFailed as exc:
        raise ManifestConflict(
            f"{uri}: another writer replaced the manifest while this one ran; nothing was "
            f"lost (the new shards stay stored under unique names): run the same command "
            f"again to merge") from exc
