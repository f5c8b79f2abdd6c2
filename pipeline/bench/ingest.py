"""`mocopipe bench ingest DATASET`: our ingest path against baselines measured in the same run.

Two comparisons, each against a baseline that runs interleaved with ours so both see the
same machine load:

(a)/(b) CPU: two-view samples per CPU-second (one core) of our per-sample path
    (`decode_image` with DCT downscaling + `two_views`) vs the facebookresearch/moco-style
    pure-PIL path (`pipeline.bench.reference`), on the dataset's first ``samples`` images.
Per format: the same two-view path on the same pictures re-encoded as JPEG, WebP and PNG
    (``per_format``: samples/s per core, mean KB, ratio to JPEG).
(c) Network: MB/s of a raw boto3 GET (``get_object`` body read in 1 MiB pieces, nothing
    else) vs our streaming tar iteration (`ReadAheadStream` + `iter_members`, every member's
    bytes handed over) on the same shards, alternating shard by shard: with ``ranges``
    parallel ranged GETs (``stream_vs_raw_get``, the reader's setting) and with one
    sequential GET (``sequential_stream_vs_raw_get``).

``load`` CPU-bound processes of its own (a Python busy loop each) run beside the whole
measurement and are stopped at the end: the figures under a loaded machine, reproducibly.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

from pipeline.config import AugmentConfig, StorageConfig
from pipeline.bench.reference import cpu_throughput
from pipeline.ingest.stream import ReadAheadStream
from pipeline.ingest.tario import iter_members
from pipeline.shards.manifest import read_manifest, shard_uri
from pipeline.shards.sources import IMAGE_EXTS
from pipeline.storage import Storage, is_s3, split_s3

_MB = 2**20


def sample_images(storage: Storage, shard_uris: list[str], n: int) -> list[bytes]:
    """The first ``n`` image members found in the shards (in order)."""
    out: list[bytes] = []
    for uri in shard_uris:
        with ReadAheadStream(storage, uri) as stream:
            for name, data in iter_members(stream, lambda f: f.rsplit(".", 1)[-1].lower()
                                           in IMAGE_EXTS):
                if data is not None:
                    out.append(data)
                    if len(out) == n:
                        return out
    if not out:
        raise ValueError(f"bench ingest: no image members in {shard_uris[:3]}...")
    return out


def raw_get(storage: Storage, uri: str, piece: int = _MB) -> int:
    """Read the whole object with one plain boto3 GET (local: a plain file read); bytes."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        body = storage.client.get_object(Bucket=bucket, Key=key)["Body"]
    else:
        body = open(uri, "rb")  # noqa: SIM115 - closed below
    total = 0
    try:
        while chunk := body.read(piece):
            total += len(chunk)
    finally:
        body.close()
    return total


def stream_tar(storage: Storage, uri: str, read_ahead_bytes: int, *, ranges: int = 1,
               block_bytes: int = 4 * _MB) -> int:
    """Iterate every tar member of the object through our stream; bytes fetched."""
    with ReadAheadStream(storage, uri, read_ahead_bytes=read_ahead_bytes, ranges=ranges,
                         block_bytes=block_bytes) as stream:
        for _ in iter_members(stream):
            pass
        return stream.bytes_read


def _spin() -> None:  # pragma: no cover - runs in the load processes
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


@contextlib.contextmanager
def cpu_load(n: int) -> Iterator[list[int]]:
    """``n`` CPU-bound processes running for the duration of the block; yields their pids."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spin, name=f"bench-load-{i}", daemon=True) for i in range(n)]
    try:
        for p in procs:
            p.start()
        yield [p.pid for p in procs if p.pid is not None]
    finally:
        for p in procs:
            if p.pid is not None:
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join(timeout=10)


FORMATS = {"jpg": ("JPEG", {"quality": 90}), "webp": ("WEBP", {"quality": 90}),
           "png": ("PNG", {})}


def reencode(images: list[bytes], fmt: str) -> list[bytes]:
    """The same pictures as ``fmt`` (jpg / webp / png) bytes, RGB, via Pillow."""
    import io

    from PIL import Image

    pil_format, options = FORMATS[fmt]
    out = []
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format=pil_format, **options)
            out.append(buf.getvalue())
    return out


def format_throughput(images: list[bytes], *, size: int, cfg: AugmentConfig,
                      rounds: int = 3, seed: int = 0) -> dict[str, dict[str, float]]:
    """Two-view samples per CPU-second (one core) of our per-sample path (`ours_two_views`:
    decode, DCT downscaling for JPEG, 2x crop/flip) on the same pictures encoded as JPEG,
    WebP and PNG (the formats of an img2dataset corpus); the formats alternate per round so
    each sees the same machine load. Per format: ``samples_per_core_s``, ``mean_kb`` and
    ``vs_jpg`` (its rate over JPEG's)."""
    import numpy as np
    import torch

    from pipeline.bench.reference import ours_two_views

    encoded = {fmt: reencode(images, fmt) for fmt in FORMATS}
    rng = np.random.default_rng(seed)
    spent = dict.fromkeys(FORMATS, 0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a reader actor
    try:
        for fmt, data in encoded.items():  # warm-up
            ours_two_views(data[0], fmt, size, cfg, rng)
        for r in range(rounds):
            order = list(FORMATS)[r % len(FORMATS):] + list(FORMATS)[:r % len(FORMATS)]
            for fmt in order:
                t0 = time.process_time()
                for data in encoded[fmt]:
                    ours_two_views(data, fmt, size, cfg, rng)
                spent[fmt] += time.process_time() - t0
    finally:
        torch.set_num_threads(threads)
    rate = {fmt: rounds * len(images) / max(spent[fmt], 1e-9) for fmt in FORMATS}
    return {fmt: {"samples_per_core_s": rate[fmt], "vs_jpg": rate[fmt] / rate["jpg"],
                  "mean_kb": sum(map(len, encoded[fmt])) / len(images) / 1000}
            for fmt in FORMATS}


def network_throughput(storage: Storage, shard_uris: list[str], *, rounds: int = 3,
                       read_ahead_mb: int = 16, ranges: int = 4,
                       block_mb: int = 4) -> dict[str, float]:
    """Raw GET vs streaming tar iteration (``ranges`` ranged GETs, and one sequential GET)
    over ``shard_uris``; the three alternate per shard, in a rotating order.

    Reports wall-clock MB/s (the targets) and this process's CPU milliseconds per MB (all
    threads; a figure that other load on the machine disturbs much less).
    """
    if is_s3(shard_uris[0]):
        storage.size(shard_uris[0])  # build the boto3 client before anything is timed
    names = ("raw", "stream", "sequential")
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    moved = dict.fromkeys(names, 0)
    for r in range(rounds):
        for i, uri in enumerate(shard_uris):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                t0, c0 = time.perf_counter(), time.process_time()
                if name == "raw":
                    moved[name] += raw_get(storage, uri)
                else:
                    moved[name] += stream_tar(storage, uri, read_ahead_mb * _MB,
                                              ranges=ranges if name == "stream" else 1,
                                              block_bytes=block_mb * _MB)
                wall[name] += time.perf_counter() - t0
                cpu[name] += time.process_time() - c0
    mb = {k: v / _MB for k, v in moved.items()}
    rate = {k: mb[k] / max(wall[k], 1e-9) for k in names}
    return {"raw_get_mb_s": rate["raw"], "stream_mb_s": rate["stream"],
            "sequential_stream_mb_s": rate["sequential"],
            "stream_vs_raw_get": rate["stream"] / rate["raw"],
            "sequential_stream_vs_raw_get": rate["sequential"] / rate["raw"],
            "raw_get_cpu_ms_per_mb": 1000 * cpu["raw"] / max(mb["raw"], 1e-9),
            "stream_cpu_ms_per_mb": 1000 * cpu["stream"] / max(mb["stream"], 1e-9),
            "network_mb": mb["raw"] / rounds}


def bench_ingest(dataset_uri: str, *, storage_cfg: StorageConfig | None = None,
                 samples: int = 200, size: int = 224, rounds: int = 3, max_mb: float = 1024,
                 net_rounds: int = 3, load: int = 0, ranges: int = 4,
                 block_mb: int = 4) -> dict[str, Any]:
    """Run both comparisons on ``dataset_uri`` (which holds manifest.json); returns figures.

    ``max_mb`` caps the bytes of shards used for the network comparison (at least one shard);
    ``load`` CPU-bound processes run beside everything (stopped before returning).
    """
    if samples < 1 or size < 8 or rounds < 1 or net_rounds < 1 or max_mb <= 0 or load < 0 \
            or ranges < 1 or block_mb < 1:
        raise ValueError(f"bench ingest: bad arguments samples={samples} size={size} "
                         f"rounds={rounds} net_rounds={net_rounds} max_mb={max_mb} "
                         f"load={load} ranges={ranges} block_mb={block_mb}")
    with cpu_load(load):
        report = _bench(dataset_uri, storage_cfg, samples, size, rounds, max_mb, net_rounds,
                        ranges, block_mb)
    return {**report, "load": load, "ranges": ranges, "block_mb": block_mb}


def _bench(dataset_uri: str, storage_cfg: StorageConfig | None, samples: int, size: int,
           rounds: int, max_mb: float, net_rounds: int, ranges: int,
           block_mb: int) -> dict[str, Any]:
    storage = Storage(storage_cfg or StorageConfig())
    manifest = read_manifest(storage, dataset_uri)
    uris = [shard_uri(dataset_uri, s.key) for s in manifest.shards if s.samples > 0]
    if not uris:
        raise ValueError(f"bench ingest: {dataset_uri} has no non-empty shards")
    images = sample_images(storage, uris, samples)
    cpu = cpu_throughput(images, size=size, cfg=AugmentConfig(), rounds=rounds)
    per_format = format_throughput(images, size=size, cfg=AugmentConfig(), rounds=rounds)
    picked, total = [], 0
    for shard in (s for s in manifest.shards if s.samples > 0):
        if picked and total + shard.bytes > max_mb * _MB:
            break
        picked.append(shard_uri(dataset_uri, shard.key))
        total += shard.bytes
    net = network_throughput(storage, picked, rounds=net_rounds, ranges=ranges,
                             block_mb=block_mb)
    return {"dataset": dataset_uri, "image_size": size, "images": len(images),
            "mean_image_kb": sum(map(len, images)) / len(images) / 1000,
            "shards": len(picked), **cpu, "per_format": per_format, **net}


def format_report(r: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    return "\n".join([
        f"dataset {r['dataset']}: {r['images']} images (mean {r['mean_image_kb']:.0f} KB) "
        f"at {r['image_size']} px; {r['shards']} shards ({r['network_mb']:.0f} MB) per pass",
        f"CPU, two-view samples/s per core: ours {r['ours_samples_per_core_s']:.1f}  "
        f"reference (PIL, moco-style) {r['reference_samples_per_core_s']:.1f}  "
        f"-> cpu_vs_reference {r['cpu_vs_reference']:.2f}x (target >= 3)",
        f"network, MB/s (load {r['load']}): raw boto3 GET {r['raw_get_mb_s']:.0f}  streaming "
        f"tar iteration, {r['ranges']} ranges of {r['block_mb']} MB "
        f"{r['stream_mb_s']:.0f}  -> stream_vs_raw_get {r['stream_vs_raw_get']:.2f}x "
        f"(target >= 0.9 loaded, >= 1.5 with 4 ranges idle); one sequential GET "
        f"{r['sequential_stream_mb_s']:.0f} -> {r['sequential_stream_vs_raw_get']:.2f}x",
        f"CPU ms/MB: raw {r['raw_get_cpu_ms_per_mb']:.2f}  "
        f"stream {r['stream_cpu_ms_per_mb']:.2f}",
        "per format, two-view samples/s per core (same pictures re-encoded): " + "  ".join(
            f"{fmt} {v['samples_per_core_s']:.1f} ({v['mean_kb']:.0f} KB, "
            f"{v['vs_jpg']:.2f}x jpg)" for fmt, v in r["per_format"].items()),
    ])
