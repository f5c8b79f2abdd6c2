"""`write_shards`: a corpus -> WebDataset tar shards on storage + manifest.json (written last).

Flow (one direction):
  open_source(src)                      ordered inputs (sorted paths / dataset order)
  -> `workers` loader threads           read bytes, validate they decode (or PNG-encode)
  -> webdataset ShardWriter (main thread, in input order, mtime 0)
       one local temp tar per shard; sha256 computed while writing
  -> `workers` upload threads           skip when the stored object already has this sha256
                                        (resume), else upload (multipart when large)
  -> manifest.json, once every upload succeeded.
Shard contents depend only on the input order and the size/count caps, never on timing, so
re-running an interrupted write rebuilds byte-identical shards and uploads only the missing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from pipeline.shards.indexio import object_etag
from pipeline.shards.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestConflict,
    ManifestError,
    ShardInfo,
    manifest_uri,
    read_manifest,
    swap_manifest,
    utc_now,
)
from pipeline.shards.sources import (
    BadInput,
    InputItem,
    Source,
    open_source,
    validate_image,
)
from pipeline.shards.upload import ShardSink
from pipeline.storage import ObjectNotFound, Storage, is_s3, join, split_s3

T = TypeVar("T")
R = TypeVar("R")
_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20,
          "MIB": 2**20, "G": 2**30, "GB": 2**30, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``"256MB" -> 268435456``; units B, KB, MB, GB (binary: 1 MB = 2**20 bytes), KiB/MiB/GiB
    also accepted; a bare number is bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"--shard-size {text!r}: expected a size like 256MB, 64MB, 512KB or 1GB")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"--shard-size {text!r}: must be at least 1 byte")
    return value


def default_dataset_name(dest: str) -> str:
    """``s3://corpus/fmnist/train -> "fmnist/train"``; a local folder -> its base name."""
    if is_s3(dest):
        bucket, key = split_s3(dest)
        return key.strip("/") or bucket
    return os.path.basename(os.path.normpath(dest))


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T],
                 window: int) -> Iterator[tuple[T, R]]:
    """Like pool.map, in input order, with at most `window` tasks in flight."""
    it = iter(items)
    queue: deque[tuple[T, Future[R]]] = deque()
    for item in it:
        queue.append((item, pool.submit(fn, item)))
        if len(queue) >= window:
            break
    while queue:
        item, fut = queue.popleft()
        for nxt in it:
            queue.append((nxt, pool.submit(fn, nxt)))
            break
        yield item, fut.result()


def _loader(source: Source) -> Callable[[InputItem], tuple[str, bytes] | BadInput]:
    """Per-input work for the loader threads: bytes + member extension, or the skip reason."""

    def load(item: InputItem) -> tuple[str, bytes] | BadInput:
        try:
            data = source.load(item)
        except (ObjectNotFound, OSError) as exc:
            return BadInput(f"unreadable ({exc})")
        if source.encoded_here:
            return item.ext, data
        try:
            return validate_image(data, item.ext), data
        except BadInput as exc:
            return exc

    return load


def _existing(storage: Storage, dest: str, append: bool) -> Manifest | None:
    """The dataset's current manifest, or None. An unreadable one fails an append; a fresh
    (non-append) write replaces it."""
    if not storage.exists(join(dest, MANIFEST_NAME)):
        return None
    try:
        return read_manifest(storage, dest)
    except ManifestError:
        if append:
            raise
        return None


def _classes(source: Source, old: Manifest | None, append: bool) -> list[str] | None:
    """The class list of the result: an append keeps the old order and adds new names."""
    if not (append and old and old.shards):
        return source.classes
    if old.labelled != (source.classes is not None):
        raise ValueError(
            f"--append: the dataset is {'labelled' if old.labelled else 'unlabelled'} but "
            f"{source.uri} is {'labelled' if source.classes is not None else 'unlabelled'} "
            f"(use --labels to match)")
    if source.classes is None:
        return None
    return old.classes + [c for c in source.classes if c not in old.classes]


def _same(a: Manifest, b: Manifest) -> bool:
    """Equal apart from updated_at."""
    return dataclasses.replace(a, updated_at="") == dataclasses.replace(b, updated_at="")


def write_shards(src: str, dest: str, *, storage: Storage, shard_size_bytes: int = 256 * 2**20,
                 samples_per_shard: int = 0, max_samples: int = 0, workers: int = 4,
                 labels: str = "auto", append: bool = False, dataset: str | None = None,
                 progress: bool = True, summary: bool | None = None) -> Manifest:
    """Write `src` as ``dest/shard-NNNNNN.tar`` + ``dest/manifest.json``; return the manifest.

    `shard_size_bytes` / `samples_per_shard` (0 = no cap) close a shard; `max_samples` caps
    the samples written (0 = all). Errors before any upload: bad arguments, missing
    credentials or bucket, a missing or empty source, an append whose labels do not match.
    Unreadable inputs are skipped and listed in ``manifest.skipped``. `progress` shows a
    progress bar on stderr; `summary` (default: same as `progress`) prints the final line.
    """
    for name, value, low in (("shard_size_bytes", shard_size_bytes, 1), ("workers", workers, 1),
                             ("samples_per_shard", samples_per_shard, 0),
                             ("max_samples", max_samples, 0)):
        if value < low:
            raise ValueError(f"{name}={value}: must be >= {low}")
    started = time.monotonic()
    storage.check_access(dest)
    source = open_source(src, storage, labels)
    if not source.items:
        why = "; ".join(f"{s['input']}: {s['reason']}" for s in source.skipped[:3])
        raise ValueError(f"source {src}: no images found"
                         + (f" ({len(source.skipped)} other files skipped, e.g. {why})"
                            if source.skipped else ""))
    old_etag = object_etag(storage, manifest_uri(dest))  # before the read: CAS is conservative
    old = _existing(storage, dest, append)
    classes = _classes(source, old, append)
    index = {name: i for i, name in enumerate(classes or [])}
    base = old if (append and old) else None
    sink = ShardSink(storage, dest, workers=workers, run_at=utc_now(),
                     first_index=base.next_shard_index() if base else 0,
                     known=({s.sha256 for s in base.shards} if base else set()),
                     previous=({s.key: s for s in old.shards} if old and not append else {}),
                     taken=frozenset(s.key for s in old.shards) if old else frozenset(),
                     unique=bool(append and old))
    skipped = list(source.skipped)
    total = min(len(source.items), max_samples) if max_samples else len(source.items)
    bar = _bar(total, progress, src)
    tmpdir = tempfile.mkdtemp(prefix="mocopipe-shards-")
    written = 0
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="shards-load") as pool, \
                sink.open(tmpdir, shard_size_bytes, samples_per_shard) as tar:
            for item, got in _ordered_map(pool, _loader(source), source.items, 16 * workers):
                if isinstance(got, BadInput):
                    skipped.append({"input": item.name, "reason": str(got)})
                    continue
                ext, data = got
                sample = {"__key__": item.key, ext: data}
                if classes is not None:
                    sample["cls"] = str(index[str(item.label)]).encode("ascii")
                tar.write(sample)
                written += 1
                bar.update(1)
                if written % 256 == 0 or sink.changed():
                    bar.set_postfix_str(sink.postfix(time.monotonic() - started), refresh=False)
                if max_samples and written >= max_samples:
                    break
        new = sink.finish()  # waits for every upload; raises the first failure
    finally:
        bar.close()
        sink.abort()
        shutil.rmtree(tmpdir, ignore_errors=True)
    if written == 0:
        why = "; ".join(f"{s['input']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"source {src}: none of {len(source.items)} inputs is a readable image "
                         f"(e.g. {why})")
    shards = (base.shards if base else []) + new
    now = utc_now()
    manifest = Manifest(
        format_version=1, dataset=dataset or (old.dataset if base else default_dataset_name(dest)),
        shards=shards, total_samples=sum(s.samples for s in shards),
        total_bytes=sum(s.bytes for s in shards), labelled=classes is not None,
        classes=list(classes or []), skipped=(base.skipped if base else []) + skipped,
        created_at=old.created_at if old and old.created_at else sink.run_at, updated_at=now)
    if old is not None and (not new if append else _same(old, manifest)):
        manifest = old  # nothing changed (a re-run of a finished write): keep its manifest
    else:  # LAST: only now do readers see the shards
        _swap(storage, dest, manifest, old_etag, new if append else None, skipped)
    if progress if summary is None else summary:
        print(sink.summary(dest, written, len(skipped), time.monotonic() - started), flush=True)
    return manifest


def _swap(storage: Storage, dest: str, manifest: Manifest, etag: str | None,
          appended: list[ShardInfo] | None, skipped: list[dict[str, str]],
          tries: int = 5) -> None:
    """Compare-and-swap the manifest. An append that lost a race to another writer re-reads
    the manifest and adds its own shards (content-named: nothing to rename) to it, up to
    `tries` times; a fresh or rewriting write that lost raises ManifestConflict (its shards
    stay stored: every shard PUT is create-only, so neither writer's shards were overwritten)."""
    for attempt in range(tries):
        try:
            swap_manifest(storage, dest, manifest, expect_etag=etag)
            return
        except ManifestConflict as exc:
            if appended is None and etag is None:
                raise ManifestConflict(
                    f"{manifest_uri(dest)}: another `shards write` created this dataset while "
                    f"this one ran; its manifest stands and this write's shards stay stored "
                    f"(never overwritten): run again with --append to add them to it, or "
                    f"without --append to replace it") from exc
            if appended is None or attempt == tries - 1:
                raise
        etag = object_etag(storage, manifest_uri(dest))
        live = read_manifest(storage, dest)
        keys = {s.key for s in live.shards}
        shards = live.shards + [s for s in appended if s.key not in keys]
        manifest = dataclasses.replace(
            live, shards=shards, total_samples=sum(s.samples for s in shards),
            total_bytes=sum(s.bytes for s in shards), skipped=live.skipped + skipped,
            updated_at=utc_now())


def _bar(total: int, progress: bool, src: str):  # -> tqdm.tqdm
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=f"shards {src}", disable=not progress,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
