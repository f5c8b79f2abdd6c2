"""`mocopipe shards write|index|check|ls`: corpus -> tar shards + manifest; index existing tars."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.config import load_config


def add_shards(sub: Any) -> None:
    p = sub.add_parser("shards", help="corpus -> WebDataset tar shards + manifest; check; ls")
    s = p.add_subparsers(dest="shards_cmd", required=True)

    def storage_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", default=None, help="TOML config (its [storage] section)")
        q.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="storage.KEY=VALUE", help="override a config value (repeatable)")

    w = s.add_parser("write", help="write SRC as shards + manifest.json under DEST")
    w.add_argument("src", help="folder, s3://bucket/prefix of images, fashion-mnist:train|test")
    w.add_argument("dest", help="s3://bucket/dataset or a local folder")
    w.add_argument("--shard-size", default="256MB", help="close a shard at this size (256MB)")
    w.add_argument("--samples-per-shard", type=int, default=0, help="cap per shard (0 = none)")
    w.add_argument("--max-samples", type=int, default=0, help="write at most N samples (0 = all)")
    w.add_argument("--workers", type=int, default=4, help="loader and upload threads (4)")
    w.add_argument("--labels", choices=("auto", "folders", "none"), default="auto",
                   help="folders: class sub-folders are labels (auto: see docs)")
    w.add_argument("--append", action="store_true", help="add new shards to the dataset")
    w.add_argument("--dataset", default=None, help="dataset name in the manifest")
    w.add_argument("--quiet", action="store_true", help="no progress bar (summary only)")
    storage_args(w)
    w.set_defaults(func=_cmd_shards_write)

    ix = s.add_parser("index", help="manifest for WebDataset tars that already exist")
    ix.add_argument("source", help="s3://bucket/prefix, s3://b/x/{00000..00099}.tar or a folder")
    ix.add_argument("--manifest", default=None, metavar="DEST",
                    help="where the manifest goes (a .json URI or a folder; default: "
                         "SOURCE's folder/manifest.json)")
    ix.add_argument("--append", action="store_true", help="add shards that appeared since")
    ix.add_argument("--sha256", action="store_true", help="also hash every shard (full read)")
    ix.add_argument("--workers", type=int, default=8, help="shards read at once (8)")
    ix.add_argument("--ray", action="store_true",
                    help="read the tars as Ray tasks on the cluster (RAY_ADDRESS; the tasks "
                         "take S3 credentials from their nodes' environment) instead of "
                         "threads of this process")
    ix.add_argument("--ray-cpus", type=float, default=0.5, help="CPUs per Ray task (0.5)")
    ix.add_argument("--dataset", default=None, help="dataset name in the manifest")
    ix.add_argument("--quiet", action="store_true", help="no progress bar (summary only)")
    storage_args(ix)
    ix.set_defaults(func=_cmd_shards_index)

    c = s.add_parser("check", help="verify every manifest shard (size, sha256, samples)")
    c.add_argument("dest", help="dataset: s3://bucket/dataset, a local folder or a manifest .json")
    c.add_argument("--deep", action="store_true", help="also decode every image")
    c.add_argument("--workers", type=int, default=4, help="shards checked at once (4)")
    storage_args(c)
    c.set_defaults(func=_cmd_shards_check)

    ls = s.add_parser("ls", help="summary of a dataset's manifest")
    ls.add_argument("dest", help="dataset: s3://bucket/dataset, a local folder or a manifest .json")
    ls.add_argument("--shards", action="store_true", help="also list every shard")
    ls.add_argument("--json", action="store_true", help="print the manifest JSON")
    storage_args(ls)
    ls.set_defaults(func=_cmd_shards_ls)


def _shards_storage(args: argparse.Namespace) -> Any:
    from pipeline.storage import Storage

    return Storage(load_config(args.config, args.overrides).storage)


def _cmd_shards_write(args: argparse.Namespace) -> int:
    from pipeline.shards.writer import parse_size, write_shards

    try:
        size = parse_size(args.shard_size)
        write_shards(args.src, args.dest, storage=_shards_storage(args), shard_size_bytes=size,
                     samples_per_shard=args.samples_per_shard, max_samples=args.max_samples,
                     workers=args.workers, labels=args.labels, append=args.append,
                     dataset=args.dataset, progress=not args.quiet, summary=True)
    except ValueError as exc:  # bad arguments / empty source: one line, no traceback
        print(f"mocopipe: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission, read-only file system: one line
        where = f"{exc.filename}" if exc.filename else args.dest
        print(f"mocopipe: error: shards write {args.dest}: cannot write {where}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_shards_index(args: argparse.Namespace) -> int:
    from pipeline.shards.index import index_shards, summary_line

    try:
        report = index_shards(args.source, storage=_shards_storage(args), dest=args.manifest,
                              append=args.append, sha256=args.sha256, workers=args.workers,
                              dataset=args.dataset, progress=not args.quiet,
                              on_ray=args.ray, ray_cpus=args.ray_cpus)
    except ValueError as exc:  # bad arguments / no tars / lost race: one line, no traceback
        print(f"mocopipe: error: {exc}", file=sys.stderr)
        return 2
    print(summary_line(report), flush=True)
    return 0


def _cmd_shards_check(args: argparse.Namespace) -> int:
    from pipeline.shards.check import check_dataset

    report = check_dataset(_shards_storage(args), args.dest, deep=args.deep,
                           workers=args.workers)
    m = report.manifest
    if report.problems:
        rows = [("SHARD", "PROBLEM", "DETAIL")] + [(p.shard, p.kind, p.detail)
                                                   for p in report.problems]
        w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
        for shard, kind, detail in rows:
            print(f"{shard:<{w0}}  {kind:<{w1}}  {detail}")
    for name in report.unlisted:
        print(f"note: {name} is stored but not in the manifest (left by an interrupted write?)")
    decoded = f", {report.images_decoded} images decoded" if args.deep else ""
    print(f"{args.dest}: {len(m.shards)} shards, {report.samples_seen}/{m.total_samples} "
          f"samples{decoded}: " + (f"{len(report.problems)} problem(s)" if report.problems
                                   else "OK"))
    return 1 if report.problems else 0


def _cmd_shards_ls(args: argparse.Namespace) -> int:
    from pipeline.shards.manifest import read_manifest

    m = read_manifest(_shards_storage(args), args.dest)
    if args.json:
        print(m.to_json(), end="")
        return 0
    newest = max((s.added_at for s in m.shards), default="-")
    print(f"dataset      {m.dataset}  ({args.dest})")
    print(f"shards       {len(m.shards)}")
    print(f"samples      {m.total_samples}")
    print(f"bytes        {m.total_bytes} ({m.total_bytes / 2**20:.1f} MB)")
    print(f"labelled     {'yes' if m.labelled else 'no'}")
    print(f"classes      {len(m.classes)}" + (f": {', '.join(m.classes)}" if m.classes else ""))
    print(f"skipped      {len(m.skipped)} inputs")
    print(f"newest       {newest}  (created {m.created_at}, updated {m.updated_at})")
    print(f"manifest     sha256 {m.sha256}")
    if args.shards:
        for s in m.shards:
            print(f"  {s.key}  {s.samples:>8} samples  {s.bytes:>12} bytes  {s.added_at}  "
                  f"{s.sha256[:12]}")
    return 0
