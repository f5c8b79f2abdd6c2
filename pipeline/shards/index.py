"""`mocopipe shards index`: a manifest for WebDataset tars that already exist (img2dataset,
LAION/DataComp layouts), without rewriting a byte of them.

Flow (one direction):
  `list_shards(source)`        an ``s3://`` prefix, a brace pattern
                               (``s3://b/laion/{00000..00009}.tar``) or a local folder
                               -> `ShardRef` (uri, size, ETag), sorted
  -> `workers` threads, or      each tar read once through THE tar parser (`ingest.tario`):
     Ray tasks (``on_ray``)
                               members grouped by key as webdataset does, samples without an
                               image member counted (``no_image``), image formats recorded,
                               sha256 only with ``sha256=True`` (data bytes are skipped, not
                               copied, otherwise)
  -> ``DEST.partial``          the shards indexed so far (JSON Lines), rewritten every few
                               seconds: an interrupted index resumes without re-reading them
  -> DEST                      the manifest (compare-and-swap, `manifest.swap_manifest`)

A shard key is relative to DEST's folder when the shard lives under it, else its full URI, so
readers find the shards wherever they are and nothing is written into the source prefix
unless DEST is there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.ingest.tario import iter_members
from pipeline.shards.indexio import (
    ShardRef,
    TarBodySource,
    list_shards,
    object_etag,
    source_folder,
)
from pipeline.shards.manifest import (
    Manifest,
    ShardInfo,
    manifest_uri,
    read_manifest,
    swap_manifest,
    utc_now,
)
from pipeline.storage import ObjectNotFound, Storage, is_s3

__all__ = ["IndexReport", "index_shards", "list_shards", "object_etag", "scan_tar"]

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp"})
PARTIAL_SUFFIX = ".partial"
_FLUSH_S = 5.0


@dataclass
class IndexReport:
    """What one `index_shards` call did (the CLI's summary line)."""

    manifest: Manifest
    dest: str
    indexed: int = 0  # shards read this time
    reused: int = 0  # shards taken from the partial index or the old manifest
    bad: list[dict[str, str]] = field(default_factory=list)  # unreadable tars
    changed: list[str] = field(default_factory=list)  # listed shards whose ETag changed
    bytes_read: int = 0
    seconds: float = 0.0
    readers: set[tuple[str, int]] = field(default_factory=set)  # (host, pid) that read tars
    on_ray: bool = False

    @property
    def no_image(self) -> int:
        return sum(s.no_image for s in self.manifest.shards)


def scan_tar(storage: Storage, ref: ShardRef, *, sha256: bool) -> ShardInfo:
    """Read one tar once -> its `ShardInfo` (key = ref.uri; the caller makes it relative).

    Raises:
        TarFormatError (a ValueError): not a valid tar. StorageError: the object cannot be
            read (the index stops; its partial file keeps what was done).
    """
    from webdataset.tariterators import base_plus_ext

    body, total = storage.get_stream(ref.uri)
    src = TarBodySource(body, hash_all=sha256)
    samples = no_image = 0
    formats: set[str] = set()
    key: str | None = None
    has_image = False
    try:
        for name, _ in iter_members(src, lambda _name: False):  # data skipped, never copied
            k, ext = base_plus_ext(name)
            if k is None:
                continue
            if k != key:
                if key is not None:
                    samples, no_image = samples + has_image, no_image + (not has_image)
                key, has_image = k, False
            ext = (ext or "").lower()
            if ext in IMAGE_EXTS:
                has_image = True
                formats.add(ext)
        if key is not None:
            samples, no_image = samples + has_image, no_image + (not has_image)
        src.drain()
    finally:
        body.close()
    return ShardInfo(key=ref.uri, samples=samples, bytes=total,
                     sha256=src.hexdigest() if sha256 else "", added_at=utc_now(),
                     etag=ref.etag, formats=sorted(formats), no_image=no_image)


def _relative(dest: str, uri: str) -> str:
    """`uri` relative to the folder of manifest `dest` when under it, else `uri` itself."""
    folder = dest.rsplit("/", 1)[0] + "/" if "/" in dest else ""
    if folder and uri.startswith(folder):
        return uri[len(folder):]
    if not is_s3(uri):
        return os.path.abspath(uri)
    return uri


def _read_partial(storage: Storage, uri: str) -> dict[str, ShardInfo]:
    """Shards of an interrupted index, by key ({} when there is none or it is unreadable)."""
    try:
        text = storage.get_bytes(uri).decode("utf-8")
    except ObjectNotFound:
        return {}
    out: dict[str, ShardInfo] = {}
    for line in text.splitlines():
        try:
            info = ShardInfo(**json.loads(line))
        except (ValueError, TypeError):
            break  # a torn last line: keep what came before
        out[info.key] = info
    return out


def _scan_where(storage: Storage, ref: ShardRef, sha256: bool
                ) -> tuple[ShardInfo, tuple[str, int]]:
    """`scan_tar`, and which process read the tar (host name, pid)."""
    import socket

    return scan_tar(storage, ref, sha256=sha256), (socket.gethostname(), os.getpid())


class _Scanner:
    """Runs `_scan_where` on threads of this process or as Ray tasks on the cluster that
    ``RAY_ADDRESS`` names (else a local Ray); `submit` returns a concurrent Future either way.
    Ray tasks get the S3 credentials from their node's environment, as reader actors do;
    only settings are forwarded (`envvars.forwarded_env`)."""

    def __init__(self, workers: int, on_ray: bool, ray_cpus: float) -> None:
        self.on_ray, self._connected, self._pool = on_ray, False, None
        if not on_ray:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shards-index")
            return
        import ray

        from pipeline.envvars import forwarded_env

        if not ray.is_initialized():
            env = forwarded_env()
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False,
                     **({"runtime_env": {"env_vars": env}} if env else {}))
            self._connected = True
        self._task = ray.remote(num_cpus=ray_cpus, max_retries=2)(_scan_where)

    def submit(self, storage: Storage, ref: ShardRef, sha256: bool
               ) -> Future[tuple[ShardInfo, tuple[str, int]]]:
        if self._pool is not None:
            return self._pool.submit(_scan_where, storage, ref, sha256)
        return self._task.remote(storage, ref, sha256).future()  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: not the rest first
        elif self._connected:
            import ray

            ray.shutdown()  # cancels what is still running


def index_shards(source: str, *, storage: Storage, dest: str | None = None,
                 append: bool = False, sha256: bool = False, workers: int = 8,
                 dataset: str | None = None, progress: bool = True, on_ray: bool = False,
                 ray_cpus: float = 0.5) -> IndexReport:
    """Index the tars of `source` into a manifest at `dest` (default: ``FOLDER/manifest.json``
    of the source); return the report. `workers` tars are read at once: by threads of this
    process, or with `on_ray` by Ray tasks (`ray_cpus` CPUs each) on the cluster.

    Raises:
        ValueError: bad arguments, no tar under `source`, `dest` exists without `append`.
        ManifestError: `dest` exists but is not a readable manifest (with `append`), or another
            writer replaced it while this index ran (re-run to merge).
    """
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be >= 1")
    started = time.monotonic()
    dest = manifest_uri(dest or source_folder(source))
    storage.check_access(dest)
    refs = list_shards(storage, source)
    if not refs:
        raise ValueError(f"{source}: no .tar objects found (expected an s3:// prefix, a brace "
                         f"pattern like s3://b/x/{{00000..00009}}.tar, or a local folder)")
    old: Manifest | None = None
    old_etag = object_etag(storage, dest)
    if old_etag is not None:
        if not append:
            raise ValueError(f"{dest} already exists; use --append to add new shards, or "
                             f"name another --manifest")
        old = read_manifest(storage, dest)
    known = {s.key: s for s in (old.shards if old else [])}
    partial_uri = dest + PARTIAL_SUFFIX
    partial = _read_partial(storage, partial_uri)
    report = IndexReport(manifest=old or _empty(source, dataset), dest=dest)
    done: dict[str, ShardInfo] = {}
    todo: list[ShardRef] = []
    for ref in refs:
        key = _relative(dest, ref.uri)
        prev = known.get(key) or partial.get(key)
        if prev is not None and (not ref.etag or prev.etag == ref.etag or key in known) \
                and (sha256 is False or prev.sha256 or key in known):
            done[key] = prev
            report.reused += 1
            if key in known and ref.etag and prev.etag and prev.etag != ref.etag:
                report.changed.append(key)
        else:
            todo.append(ref)
    bar = _bar(len(refs), progress, source)
    bar.update(len(done))
    last_flush = time.monotonic()
    report.on_ray = on_ray
    scanner = _Scanner(workers, on_ray, ray_cpus)
    queue = iter(todo)
    pending: dict[Future[tuple[ShardInfo, tuple[str, int]]], ShardRef] = {}

    def refill() -> None:  # at most 2 x workers tars in flight: bounded at millions of shards
        while len(pending) < 2 * workers:
            ref = next(queue, None)
            if ref is None:
                return
            pending[scanner.submit(storage, ref, sha256)] = ref

    try:
        refill()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            failure: BaseException | None = None
            for fut in finished:
                ref = pending.pop(fut)
                try:
                    info, where = fut.result()
                except ValueError as exc:  # TarFormatError and friends: a bad tar, left out
                    report.bad.append({"input": ref.uri, "reason": _reason(exc)})
                    bar.update(1)
                    continue
                except BaseException as exc:  # noqa: BLE001 - raised once the rest is kept
                    failure = failure or exc
                    continue
                info.key = _relative(dest, ref.uri)
                done[info.key] = info
                partial[info.key] = info
                report.indexed += 1
                report.bytes_read += info.bytes
                report.readers.add(where)
                bar.update(1)
                rate = report.bytes_read / 2**20 / max(time.monotonic() - started, 1e-6)
                bar.set_postfix_str(f"{rate:.1f} MB/s", refresh=False)
            if failure is not None:
                raise failure
            if time.monotonic() - last_flush > _FLUSH_S:
                _write_partial(storage, partial_uri, partial)
                last_flush = time.monotonic()
            refill()
    except BaseException:
        _write_partial(storage, partial_uri, partial)  # Ctrl-C / crash: keep the progress
        raise
    finally:
        scanner.close()
        bar.close()
    order = {_relative(dest, r.uri): i for i, r in enumerate(refs)}
    shards = [known[k] for k in known if k not in order]  # listed before, gone from source now
    shards += sorted(done.values(), key=lambda s: order[s.key])
    report.manifest = _build(report.manifest, shards, report.bad, dataset)
    swap_manifest(storage, dest, report.manifest, expect_etag=old_etag)
    storage.delete(partial_uri)
    report.seconds = time.monotonic() - started
    return report


def _reason(exc: BaseException) -> str:
    """The cause's message: a Ray task's error carries the remote traceback in str()."""
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, BaseException) else exc)


def _empty(source: str, dataset: str | None) -> Manifest:
    from pipeline.shards.writer import default_dataset_name

    folder = source_folder(source)
    now = utc_now()
    return Manifest(format_version=1, dataset=dataset or default_dataset_name(folder), shards=[],
                    total_samples=0, total_bytes=0, labelled=False, classes=[], skipped=[],
                    created_at=now, updated_at=now)


def _build(base: Manifest, shards: list[ShardInfo], bad: list[dict[str, str]],
           dataset: str | None) -> Manifest:
    return Manifest(format_version=1, dataset=dataset or base.dataset, shards=shards,
                    total_samples=sum(s.samples for s in shards),
                    total_bytes=sum(s.bytes for s in shards), labelled=False, classes=[],
                    skipped=base.skipped + bad, created_at=base.created_at,
                    updated_at=utc_now())


def _write_partial(storage: Storage, uri: str, partial: dict[str, ShardInfo]) -> None:
    if partial:
        text = "".join(json.dumps(asdict(s)) + "\n" for s in partial.values())
        storage.put_bytes(uri, text.encode("utf-8"))


def _bar(total: int, progress: bool, src: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="shard", desc=f"index {src}", disable=not progress,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def summary_line(report: IndexReport) -> str:
    """One line for the CLI: shards, samples, skipped samples, speed."""
    m, secs = report.manifest, max(report.seconds, 1e-6)
    formats = sorted({f for s in m.shards for f in s.formats})
    parts = [(f"{report.dest}: {len(m.shards)} shards, {m.total_samples} samples "
              f"({', '.join(formats) or 'no images'})"),
             f"{report.no_image} samples without an image skipped",
             (f"{report.indexed} shards read ({report.indexed / secs:.1f} shards/s, "
              f"{report.bytes_read / 2**20 / secs:.1f} MB/s), {report.reused} reused")]
    if report.on_ray:
        hosts = {h for h, _ in report.readers}
        parts.append(f"read by {len(report.readers)} Ray worker process(es) on "
                     f"{len(hosts)} host(s)")
    if report.bad:
        parts.append(f"{len(report.bad)} unreadable tar(s) left out, e.g. "
                     f"{report.bad[0]['input']}: {report.bad[0]['reason']}")
    if report.changed:
        parts.append(f"{len(report.changed)} listed shard(s) changed since indexed (ETag), "
                     f"e.g. {report.changed[0]}: `mocopipe shards check` lists them")
    return "; ".join(parts)
