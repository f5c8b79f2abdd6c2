"""`mocopipe bench plan`: the cost of the manifest and the epoch plan as the corpus grows.

For each corpus size (synthetic manifests of 10k, 100k, 1M shards of ~10k samples, full
``s3://`` URIs as keys, as `shards index` writes them) and each manifest form (the indented
JSON of format 1, the compact columnar JSON of format 2), one fresh child process measures:
the time to read + validate the manifest (the driver's `read_manifest`), the time to plan one
epoch for 8, 64 and 512 ranks x 4 readers (`plan_epoch`), the peak RSS of that process
(driver), the largest plan one worker keeps (its rank's slices), and the time a worker
takes to plan its own rank only (`plan_epoch(only_rank=)`, what the loader does). The baseline the ratios
are taken against is format 1, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

SIZES = (10_000, 100_000, 1_000_000)
RANKS = (8, 64, 512)
READERS = 4
PER_RANK_BATCH = 256


def synthetic_manifest(shards: int, seed: int = 0) -> Any:  # -> Manifest
    """A valid manifest of `shards` indexed shards (9k-11k samples, ~100 KB per sample)."""
    from pipeline.shards.manifest import FORMAT_VERSION, Manifest, ShardInfo

    rng = np.random.default_rng(seed)
    samples = rng.integers(9_000, 11_000, shards).tolist()
    infos = [ShardInfo(key=f"s3://corpus/laion/{i:07d}.tar", samples=n, bytes=n * 100_000,
                       sha256="", added_at="2026-11-28T00:00:00.000000Z",
                       etag=f'"{i:032x}"', formats=["jpg"], no_image=0)
             for i, n in enumerate(samples)]
    return Manifest(format_version=FORMAT_VERSION, dataset="laion", shards=infos,
                    total_samples=sum(samples), total_bytes=sum(s.bytes for s in infos),
                    labelled=False, classes=[], created_at="2026-11-28T00:00:00.000000Z",
                    updated_at="2026-11-28T00:00:00.000000Z")


def _child(path: str, ranks: list[int]) -> dict[str, Any]:
    """In a fresh process: load the manifest at `path`, plan for each rank count."""
    from pipeline.shards.manifest import read_manifest
    from pipeline.shards.plan import plan_epoch
    from pipeline.storage import Storage

    base_mb = _peak_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    manifest = read_manifest(Storage(), path)
    counts = manifest.shard_counts()
    out: dict[str, Any] = {"load_s": time.perf_counter() - t0,
                           "load_cpu_s": time.process_time() - c0, "plans": {}}
    for world in ranks:
        t1, c1 = time.perf_counter(), time.process_time()
        plan = plan_epoch(counts, seed=1, epoch=3, world_size=world,
                          per_rank_batch=PER_RANK_BATCH, readers_per_rank=READERS)
        wall, cpu = time.perf_counter() - t1, time.process_time() - c1
        worker = max(sum(len(r.slices) for r in rank.readers) for rank in plan.ranks)
        del plan
        # what a train worker computes: its own rank's part only (`only_rank`)
        t2, c2 = time.perf_counter(), time.process_time()
        own = plan_epoch(counts, seed=1, epoch=3, world_size=world,
                         per_rank_batch=PER_RANK_BATCH, readers_per_rank=READERS,
                         only_rank=world - 1)
        out["plans"][str(world)] = {"plan_s": wall, "plan_cpu_s": cpu, "worker_slices": worker,
                                    "rank_plan_s": time.perf_counter() - t2,
                                    "rank_plan_cpu_s": time.process_time() - c2}
        del own
    out["peak_mb"] = _peak_mb()
    out["import_mb"] = base_mb
    return out


def _peak_mb() -> float:
    """Peak RSS of this process since its exec (VmHWM; ru_maxrss would include the peak of
    the parent that forked it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_plan(sizes: tuple[int, ...] = SIZES, ranks: tuple[int, ...] = RANKS) -> list[dict]:
    """One row per (shards, manifest form): load_s, plan_s per rank count, peak_mb."""
    return list(iter_rows(sizes, ranks))


def iter_rows(sizes: tuple[int, ...], ranks: tuple[int, ...],
              compacts: tuple[bool, ...] = (False, True)) -> Iterator[dict]:
    """`bench_plan`'s rows, each as soon as it is measured (compact: format 2 or 1)."""
    from pipeline.shards.manifest import manifest_bytes

    with tempfile.TemporaryDirectory(prefix="mocopipe-bench-plan-") as tmp:
        for n in sizes:
            manifest = synthetic_manifest(n)
            for compact in compacts:
                path = os.path.join(tmp, f"m{n}-{int(compact)}.json")
                with open(path, "wb") as f:
                    f.write(manifest_bytes(manifest, compact=compact))
                size_mb = os.path.getsize(path) / 2**20
                proc = subprocess.run(
                    [sys.executable, "-m", "pipeline.bench.plan", "--child", path,
                     ",".join(map(str, ranks))], capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"bench plan child failed: {proc.stderr[-2000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                os.remove(path)
                yield {"shards": n, "form": "json-v2" if compact else "json-v1",
                       "file_mb": size_mb, **result}
            del manifest


def format_header(ranks: list[str]) -> str:
    return (f"{'shards':>9} {'manifest':>8} {'file MB':>8} {'load s':>12} "
            + " ".join(f"{'plan ' + r + 'x4 s':>14}" for r in ranks)
            + f" {'load+plan' + ranks[-1] + ' s':>14} {'peak MB':>8} {'worker slices':>13}"
            + f" {'1-rank plan s':>14}")


def format_row(row: dict) -> str:
    """Seconds as ``wall/cpu`` (CPU time of the process: what wall time would be on an idle
    core; on a shared machine wall time includes waiting for one)."""
    plans = row["plans"]
    ranks = list(plans)
    last = plans[ranks[-1]]
    total = f"{row['load_s'] + last['plan_s']:.2f}/{row['load_cpu_s'] + last['plan_cpu_s']:.2f}"
    return (f"{row['shards']:>9} {row['form']:>8} {row['file_mb']:>8.1f} "
            f"{row['load_s']:>6.2f}/{row['load_cpu_s']:<5.2f} "
            + " ".join(f"{plans[r]['plan_s']:>7.2f}/{plans[r]['plan_cpu_s']:<6.2f}"
                       for r in ranks)
            + f" {total:>14} {row['peak_mb']:>8.0f} {last['worker_slices']:>13}"
            + f" {last['rank_plan_s']:>7.2f}/{last['rank_plan_cpu_s']:<6.2f}")


def format_report(rows: list[dict]) -> str:
    ranks = list(rows[0]["plans"]) if rows else [str(r) for r in RANKS]
    return "\n".join([format_header(ranks)] + [format_row(r) for r in rows] + [_NOTE])


_NOTE = (f"(seconds as wall/cpu; per-rank batch {PER_RANK_BATCH}, {READERS} readers per rank; "
         "peak MB = max RSS of "
         "the process that loads and plans; worker slices = the most shard slices one rank's "
         "readers hold at the largest world size; 1-rank plan = the last rank's part alone, as a "
         "train worker plans it)")


def add_cli(sub: Any) -> None:
    """The `bench plan` sub-command (registered by pipeline.cli.bench)."""
    p = sub.add_parser("plan", help="manifest load + epoch plan time and memory at 10k-1M shards")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="shard counts")
    p.add_argument("--ranks", default=",".join(map(str, RANKS)), help="world sizes")
    p.add_argument("--compact-only", action="store_true", help="skip the format-1 baseline")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=_cmd)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"{flag} {text!r}: expected positive integers, e.g. 10000,100000")
    return values


def _cmd(args: argparse.Namespace) -> int:
    sizes, ranks = _ints(args.sizes, "--sizes"), _ints(args.ranks, "--ranks")
    if args.json:
        print(json.dumps(bench_plan(sizes, ranks)))
        return 0
    print(format_header([str(r) for r in ranks]), flush=True)
    for row in iter_rows(sizes, ranks, (True,) if args.compact_only else (False, True)):
        print(format_row(row), flush=True)
    print(_NOTE)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], [int(r) for r in sys.argv[3].split(",")])))
