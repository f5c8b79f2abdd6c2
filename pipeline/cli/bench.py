"""`mocopipe bench ...`: each figure a ratio against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.bench.plan import add_cli as add_bench_plan
from pipeline.cli.common import config_args
from pipeline.config import ConfigError, IngestConfig, load_config


def add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    s = p.add_subparsers(dest="bench_cmd", required=True)
    _add_bench_ingest(s)
    _add_bench_train(s)
    _add_bench_gpu(s)
    _add_bench_pipeline(s)
    _add_bench_placement(s)
    add_bench_plan(s)


def _add_bench_ingest(s: Any) -> None:
    p = s.add_parser("ingest", help="our decode+crop path vs a PIL moco-style baseline, and "
                     "streaming tar iteration vs raw boto3 GET, in one run")
    p.add_argument("dataset", help="dataset URI holding manifest.json (s3://bucket/prefix or a folder)")
    p.add_argument("--samples", type=int, default=200, help="images for the CPU comparison")
    p.add_argument("--size", type=int, default=224, help="view size in pixels")
    p.add_argument("--rounds", type=int, default=3, help="interleaved passes of the CPU comparison")
    p.add_argument("--net-rounds", type=int, default=3, help="passes over the shards for MB/s")
    p.add_argument("--max-mb", type=float, default=1024, help="cap on shard MB per network pass")
    p.add_argument("--load", type=int, default=0,
                   help="CPU-bound processes of its own to run beside the measurement")
    p.add_argument("--ranges", type=int, default=IngestConfig().stream_ranges,
                   help="parallel ranged GETs per shard for our stream (the reader's "
                   "ingest.stream_ranges)")
    p.add_argument("--block-mb", type=int, default=IngestConfig().range_block_mb,
                   help="bytes per ranged GET, MB (ingest.range_block_mb)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench_ingest)


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from pipeline.bench.ingest import bench_ingest, format_report

    report = bench_ingest(args.dataset, samples=args.samples, size=args.size,
                          rounds=args.rounds, max_mb=args.max_mb, net_rounds=args.net_rounds,
                          load=args.load, ranges=args.ranges, block_mb=args.block_mb)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _add_bench_train(s: Any) -> None:
    p = s.add_parser("train", help="img/s of MoCo steps for the configured encoder on this CPU, "
                     "vs a supervised step of the same encoder measured in the same run")
    config_args(p, required=False)
    p.add_argument("--batch", type=int, default=0,
                   help="batch per step (default: train.per_worker_batch)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating baseline/MoCo rounds; the median is reported (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_bench_train)


def _cmd_bench_train(args: argparse.Namespace) -> int:
    import torch

    from pipeline.bench.train import bench_train, format_report

    cfg = load_config(args.config, args.overrides)
    if args.threads < 0:
        raise ConfigError(f"--threads: {args.threads} must be >= 0 (0 = torch's default)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = bench_train(cfg.model, cfg.moco, image_size=cfg.data.image_size,
                             channels=cfg.data.channels,
                             batch=args.batch or cfg.train.per_worker_batch, steps=args.steps,
                             warmup=args.warmup, rounds=args.rounds, seed=cfg.train.seed)
    except ValueError as exc:  # a bad flag/config combination: one line, exit 2
        raise ConfigError(str(exc)) from exc
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def _add_bench_gpu(s: Any) -> None:
    from pipeline.bench import gpu

    p = s.add_parser("gpu", help="MoCo v2 ResNet-50 img/s on one GPU: synthetic vs compiled vs "
                     "DDP shuffle/sync BN vs the real ingest, peak memory; one JSON line")
    gpu.add_arguments(p)
    p.set_defaults(func=_cmd_bench_gpu)


def _cmd_bench_gpu(args: argparse.Namespace) -> int:
    from pipeline.bench import gpu

    try:
        return gpu.run(args)
    except ValueError as exc:  # no GPU / a bad flag: one line, exit 2
        raise ConfigError(str(exc)) from exc


def _add_bench_pipeline(s: Any) -> None:
    p = s.add_parser("pipeline", help="steps/s of real training (S3 -> readers -> loader -> "
                     "MoCo step) vs the same workers on in-memory batches, in one run")
    config_args(p, required=True)
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20)")
    p.add_argument("--steps", type=int, default=40, help="timed steps (default 40)")
    p.add_argument("--workers", type=int, default=2, help="DDP workers (default 2)")
    p.add_argument("--log-every", type=int, default=10,
                   help="steps per logged window; divides --warmup and --steps (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench_pipeline)


def _cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from pipeline.bench.pipeline import bench_pipeline, format_report

    cfg = load_config(args.config, args.overrides)
    try:
        report = bench_pipeline(cfg, warmup=args.warmup, steps=args.steps,
                                workers=args.workers, log_every=args.log_every)
    except ValueError as exc:  # a bad flag/config combination: one line, exit 2
        raise ConfigError(str(exc)) from exc
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _add_bench_placement(s: Any) -> None:
    p = s.add_parser("placement", help="readers on the trainer's node vs on a reader node: "
                     "batches/s and bytes moved between nodes, in one run (needs a node "
                     "offering `reader`, e.g. `mocopipe up --reader-nodes 1`)")
    config_args(p, required=True)
    p.add_argument("--batches", type=int, default=50, help="batches per placement and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench_placement)


def _cmd_bench_placement(args: argparse.Namespace) -> int:
    from pipeline.bench.placement import bench_reader_placement

    cfg = load_config(args.config, args.overrides)
    try:
        out = bench_reader_placement(cfg, batches=args.batches, rounds=args.rounds)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if args.json:
        print(json.dumps(out))
        return 0
    for name in ("local", "remote"):
        r = out[name]
        print(f"readers {name:<6} {r['batches_per_s']:>8.2f} batches/s  "
              f"{r['mb_per_s_between_nodes']:>8.2f} MB/s between nodes")
    print(f"remote / local batches/s: {out['ratio_batches_per_s']}")
    return 0
