"""`mocopipe ...`: thin subcommands. Parse, load config, call the library, print.

Each verb group lives in its own section below (`_add_<group>` builds its parsers, the
`_cmd_*` functions run it). Library errors (ConfigError, StorageError, ManifestError, ...)
are turned into one clear line on stderr and a non-zero exit in `main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from pipeline.config import ConfigError, load_config

Handler = Callable[[argparse.Namespace], int | None]


def _config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    if required:
        p.add_argument("config", help="TOML config, e.g. jobs/configs/demo.toml")
    else:
        p.add_argument("config", nargs="?", default=None, help="TOML config")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")


# ----------------------------------------------------------------------------- config


def _add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="inspect configs")
    s = p.add_subparsers(dest="config_cmd", required=True)
    show = s.add_parser("show", help="print the resolved, validated config tree")
    _config_args(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML-like text")
    show.set_defaults(func=_cmd_config_show)


def _cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    tree = cfg.to_dict()
    if args.json:
        print(json.dumps(tree, indent=2))
        return 0
    for section, values in tree.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()
    return 0


# ----------------------------------------------------------------------------- stack (up/down/status/env)


def _state_dir_arg(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument("--state-dir", default=os.environ.get("MOCOPIPE_STATE_DIR", ".mocopipe"),
                   help="stack state directory (default: $MOCOPIPE_STATE_DIR or ./.mocopipe)")


def _add_stack(sub: Any) -> None:
    p = sub.add_parser("up", help="start the local stack (SeaweedFS S3, MLflow, Ray head)")
    _state_dir_arg(p)
    for name in ("s3", "mlflow", "ray_gcs", "ray_dashboard"):
        p.add_argument(f"--{name.replace('_', '-')}-port", dest=f"port_{name}", type=int,
                       default=None, help=f"fixed port for {name} (default: a free one)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per health check")
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the Ray head")
    p.set_defaults(func=_cmd_up)
    p = sub.add_parser("down", help="stop the local stack by PID (data is kept)")
    _state_dir_arg(p)
    p.add_argument("--purge", action="store_true", help="also delete the state dir (all data)")
    p.set_defaults(func=_cmd_down)
    p = sub.add_parser("status", help="print the stack's endpoints and health")
    _state_dir_arg(p)
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("env", help="print `export ...` lines to reach the stack (eval them)")
    _state_dir_arg(p)
    p.set_defaults(func=_cmd_env)


def _cmd_up(args: argparse.Namespace) -> int:
    from pipeline import stack

    ports = {k[len("port_"):]: v for k, v in vars(args).items()
             if k.startswith("port_") and v is not None}
    state = stack.up(args.state_dir, ports=ports, timeout_s=args.timeout,
                     num_cpus=args.num_cpus, log=lambda m: print(m, flush=True))
    print(f"stack up in {state.startup_s:.1f}s (state: {state.state_dir})")
    print(f"  S3      {state.s3_endpoint}  buckets: {', '.join(state.buckets)}")
    print(f"  MLflow  {state.mlflow_uri}")
    print(f"  Ray     {state.ray_address}  dashboard/jobs: {state.ray_dashboard}")
    print(f"reach it from a shell with:  eval \"$(mocopipe env --state-dir {args.state_dir})\"")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from pipeline import stack

    stopped = stack.down(args.state_dir, purge=args.purge)
    print(f"stopped {len(stopped)} process(es)" + (f"; deleted {args.state_dir}"
                                                   if args.purge else "; data kept"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline import stack

    state = stack.load_state(args.state_dir)
    if state is None:
        print(f"no stack in {args.state_dir} (run `mocopipe up`)")
        return 1
    health = stack.health(args.state_dir)
    endpoints = {"s3": state.s3_endpoint, "mlflow": state.mlflow_uri,
                 "ray": f"{state.ray_address}  dashboard/jobs: {state.ray_dashboard}"}
    for name, ok in health.items():
        alive = sum(r.alive() for r in state.refs(name))
        print(f"{name:<7} {'healthy' if ok else 'DOWN':<8} {endpoints[name]}  "
              f"({alive}/{len(state.procs.get(name, []))} recorded processes alive)")
    return 0 if all(health.values()) else 1


def _cmd_env(args: argparse.Namespace) -> int:
    import shlex

    from pipeline import stack

    for key, value in stack.stack_env(args.state_dir).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


# ----------------------------------------------------------------------------- shards


def _add_shards(sub: Any) -> None:
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

    c = s.add_parser("check", help="verify every manifest shard (size, sha256, samples)")
    c.add_argument("dest", help="dataset: s3://bucket/dataset or a local folder")
    c.add_argument("--deep", action="store_true", help="also decode every image")
    c.add_argument("--workers", type=int, default=4, help="shards checked at once (4)")
    storage_args(c)
    c.set_defaults(func=_cmd_shards_check)

    ls = s.add_parser("ls", help="summary of a dataset's manifest")
    ls.add_argument("dest", help="dataset: s3://bucket/dataset or a local folder")
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


# ----------------------------------------------------------------------------- train / demo


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="run MoCo pretraining on Ray Train (this machine's Ray, "
                       "or RAY_ADDRESS / ray.address)")
    _config_args(p)
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="continue this MLflow run (run id or run name) from its last checkpoint")
    p.add_argument("--json", action="store_true", help="end with one JSON summary line")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("demo", help="local stack + Fashion-MNIST shards + a 2-worker demo run")
    p.add_argument("--state-dir", default=".mocopipe", help="stack state directory")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a demo config value")
    p.set_defaults(func=_cmd_demo)


def _print_train_summary(summary: dict[str, Any], as_json: bool) -> None:
    knn = summary.get("knn_top1")
    print(f"run {summary['run_name']} ({summary['run_id']}): {summary['steps']} steps, "
          f"final loss {summary['loss']}, knn_top1 {knn if knn is None else round(knn, 4)}")
    if summary.get("registered_model"):
        print(f"registered model: {summary['registered_model']} version "
              f"{summary['model_version']}")
    print(f"MLflow UI: {summary['mlflow_url']}")
    if summary.get("stopped"):
        print(f"stopped early; continue with --resume {summary['run_name']}")
    if as_json:
        print(json.dumps(summary), flush=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.tracking import TrackingError
    from pipeline.train.ray_trainer import run_training

    cfg = load_config(args.config, args.overrides)
    try:
        summary = run_training(cfg, resume=args.resume)
    except TrackingError as exc:
        print(f"mocopipe: error: {exc}", file=sys.stderr)
        return 2
    _print_train_summary(summary, args.json)
    return 143 if summary.get("stopped") else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.train.demo import run_demo

    summary = run_demo(args.state_dir, args.overrides, say=lambda m: print(m, flush=True))
    print(f"demo finished in {summary['wall_s']:.0f}s; stop the stack with "
          f"`mocopipe down --state-dir {args.state_dir}`")
    _print_train_summary(summary, True)
    return 0


# ----------------------------------------------------------------------------- bench


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    s = p.add_subparsers(dest="bench_cmd", required=True)
    _add_bench_ingest(s)
    _add_bench_train(s)


def _add_bench_ingest(s: Any) -> None:
    p = s.add_parser("ingest", help="our decode+crop path vs a PIL moco-style baseline, and "
                     "streaming tar iteration vs raw boto3 GET, in one run")
    p.add_argument("dataset", help="dataset URI holding manifest.json (s3://bucket/prefix or a folder)")
    p.add_argument("--samples", type=int, default=200, help="images for the CPU comparison")
    p.add_argument("--size", type=int, default=224, help="view size in pixels")
    p.add_argument("--rounds", type=int, default=3, help="interleaved passes of the CPU comparison")
    p.add_argument("--net-rounds", type=int, default=3, help="passes over the shards for MB/s")
    p.add_argument("--max-mb", type=float, default=1024, help="cap on shard MB per network pass")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench_ingest)


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest.bench import bench_ingest, format_report

    report = bench_ingest(args.dataset, samples=args.samples, size=args.size,
                          rounds=args.rounds, max_mb=args.max_mb, net_rounds=args.net_rounds)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _add_bench_train(s: Any) -> None:
    p = s.add_parser("train", help="img/s of MoCo steps for the configured encoder on this CPU, "
                     "vs a supervised step of the same encoder measured in the same run")
    _config_args(p, required=False)
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

    from pipeline.model.bench import bench_train, format_report

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


# ----------------------------------------------------------------------------- jobs (submit/jobs/nightly/schedule)


def _add_jobs(sub: Any) -> None:
    """submit, jobs ls|logs|stop, nightly, schedule install|ls|remove."""
    p = sub.add_parser("submit", help="run a job on a Ray cluster (ships this project)")
    _config_args(p)
    _cluster_args(p)
    p.add_argument("--submission-id", default=None, help="job id (default: Ray generates one)")
    p.add_argument("--module", default="jobs.pretrain",
                   help="entrypoint module run as `python -m MODULE --config ...`")
    p.set_defaults(func=_jobs_errors(_cmd_submit))

    p = sub.add_parser("jobs", help="list, follow and stop Ray jobs")
    s = p.add_subparsers(dest="jobs_cmd", required=True)
    q = s.add_parser("ls", help="jobs on the cluster, newest first")
    q.add_argument("--address", default=None, help="Ray dashboard URL (default: RAY_ADDRESS)")
    q.set_defaults(func=_jobs_errors(_cmd_jobs_ls))
    q = s.add_parser("logs", help="print a job's logs")
    q.add_argument("id", help="submission id")
    q.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    q.add_argument("--address", default=None, help="Ray dashboard URL (default: RAY_ADDRESS)")
    q.set_defaults(func=_jobs_errors(_cmd_jobs_logs))
    q = s.add_parser("stop", help="stop a job")
    q.add_argument("id", help="submission id")
    q.add_argument("--address", default=None, help="Ray dashboard URL (default: RAY_ADDRESS)")
    q.set_defaults(func=_jobs_errors(_cmd_jobs_stop))

    p = sub.add_parser("nightly", help="submit tonight's incremental run (one per config and date)")
    _config_args(p)
    _cluster_args(p)
    p.add_argument("--date", default=None, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--local", action="store_true",
                   help="run the night in this process instead of submitting a Ray job")
    p.set_defaults(func=_jobs_errors(_cmd_nightly))

    p = sub.add_parser("schedule", help="run `mocopipe nightly` on a schedule (cron / systemd)")
    s = p.add_subparsers(dest="schedule_cmd", required=True)
    q = s.add_parser("install", help="add or replace the schedule of CONFIG")
    q.add_argument("config", help="TOML config; the schedule is named after its train.name")
    q.add_argument("--cron", default="0 2 * * *", help='cron expression (default "0 2 * * *")')
    q.add_argument("--systemd", action="store_true",
                   help="write a systemd user timer + service instead of a crontab entry")
    q.add_argument("--env-file", default=None,
                   help="KEY=VALUE file loaded before each run (RAY_ADDRESS, AWS_*, MLFLOW_*)")
    q.add_argument("--address", default=None, help="Ray dashboard URL the runs go to")
    q.set_defaults(func=_jobs_errors(_cmd_schedule_install))
    q = s.add_parser("ls", help="schedules installed by mocopipe")
    q.set_defaults(func=_jobs_errors(_cmd_schedule_ls))
    q = s.add_parser("remove", help="remove a schedule (crontab entry and systemd units)")
    q.add_argument("name", help="schedule name (the config's train.name)")
    q.set_defaults(func=_jobs_errors(_cmd_schedule_remove))


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray dashboard URL, e.g. http://HEAD:8265 (default: ray.address, RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs; exit with its status")
    p.add_argument("--no-forward-env", action="store_true",
                   help="do not pass this shell's AWS_*/MLFLOW_* values (the cluster has its own)")


def _jobs_errors(fn: Handler) -> Handler:
    """Print JobsError / ScheduleError / bad dates as one line (exit 2), like `main` does."""
    def run(args: argparse.Namespace) -> int | None:
        from pipeline.jobs import JobsError
        from pipeline.schedule import ScheduleError

        try:
            return fn(args)
        except (JobsError, ScheduleError) as exc:
            print(f"mocopipe: error: {exc}", file=sys.stderr)
            return 2
    return run


def _wait_for(client: Any, sid: str, started: float) -> int:
    import time

    from pipeline import jobs

    result = jobs.wait(client, sid)
    if result.first_step_at is not None:
        print(f"first training step logged {result.first_step_at - started:.1f} s after "
              "submission", flush=True)
    print(f"job {sid} {result.status} ({time.time() - started:.1f} s after submission)",
          flush=True)
    return jobs.exit_code(result.status)


def _cmd_submit(args: argparse.Namespace) -> int:
    import time

    from pipeline import jobs

    cfg = load_config(args.config, args.overrides)  # a bad config never reaches the cluster
    client = jobs.connect(args.address or cfg.ray.address or None)
    names = () if args.no_forward_env else jobs.FORWARDED_ENV
    spec = jobs.JobSpec(module=args.module, config=args.config, overrides=args.overrides)
    started = time.time()
    sid = jobs.submit(client, spec, submission_id=args.submission_id, env_names=names)
    print(f"submitted {sid}: {jobs.build_entrypoint(spec)}\n  "
          f"{jobs.describe_runtime_env(jobs.build_runtime_env(env_names=names))}", flush=True)
    return _wait_for(client, sid, started) if args.wait else 0


def _cmd_jobs_ls(args: argparse.Namespace) -> int:
    from pipeline import jobs

    print(jobs.format_jobs(jobs.list_jobs(jobs.connect(args.address))))
    return 0


def _cmd_jobs_logs(args: argparse.Namespace) -> int:
    from pipeline import jobs

    client = jobs.connect(args.address)
    if args.follow:
        return jobs.exit_code(jobs.wait(client, args.id).status)
    print(jobs.logs(client, args.id), end="")
    return 0


def _cmd_jobs_stop(args: argparse.Namespace) -> int:
    from pipeline import jobs

    running = jobs.stop(jobs.connect(args.address), args.id)
    print(f"{args.id}: {'stop requested' if running else 'was not running'}")
    return 0


def _cmd_nightly(args: argparse.Namespace) -> int:
    import time

    from pipeline import jobs, nightly
    from pipeline.nightly_plan import parse_date

    cfg = load_config(args.config, args.overrides)
    try:
        date = parse_date(args.date)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.local:
        print(json.dumps(nightly.run_nightly(cfg, date)))
        return 0
    client = jobs.connect(args.address or cfg.ray.address or None)
    started = time.time()
    action, sid = nightly.submit_nightly(client, args.config, date, args.overrides, cfg.train.name,
                                         forward_env=not args.no_forward_env)
    said = {"submit": "submitted", "join": "already running: joining it",
            "done": "already succeeded: nothing submitted"}[action]
    print(f"nightly {cfg.train.name} {date}: {said} ({sid})", flush=True)
    if action == "done" or not args.wait:
        return 0
    return _wait_for(client, sid, started)


def _cmd_schedule_install(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline import schedule
    from pipeline.jobs import PROJECT_ROOT

    name = load_config(args.config).train.name
    logs = Path.home() / ".mocopipe" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("mocopipe")
    mocopipe = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]
    cmd = schedule.nightly_command(args.config, root=PROJECT_ROOT, mocopipe=mocopipe,
                                   env_file=args.env_file, address=args.address,
                                   log_file=str(logs / f"nightly-{name}.log"))
    if args.systemd:
        paths = schedule.install_systemd(name, args.cron, cmd)
        print("wrote " + ", ".join(map(str, paths)))
        print(f"activate: systemctl --user daemon-reload && systemctl --user enable --now "
              f"{paths[1].name}")
        return 0
    tab = schedule.Crontab.default()
    schedule.install_cron(tab, name, args.cron, cmd)
    print(f"schedule {name!r} ({args.cron}) written to the {tab.describe()}")
    if tab.file is not None:
        print(f"no `crontab` command here: once cron is installed, add the entry with\n"
              f"  (crontab -l 2>/dev/null; cat {tab.file}) | crontab -")
    return 0


def _cmd_schedule_ls(args: argparse.Namespace) -> int:
    from pipeline import schedule

    entries = schedule.list_cron(schedule.Crontab.default()) + schedule.list_systemd()
    for e in entries:
        print(f"{e.name:<20} {e.kind:<8} {e.when:<28} {e.where}\n    {e.command}")
    if not entries:
        print("no schedules (mocopipe schedule install --cron \"0 2 * * *\" CONFIG)")
    return 0


def _cmd_schedule_remove(args: argparse.Namespace) -> int:
    from pipeline import schedule

    in_cron = schedule.remove_cron(schedule.Crontab.default(), args.name)
    units = schedule.remove_systemd(args.name)
    if not in_cron and not units:
        print(f"no schedule named {args.name!r}", file=sys.stderr)
        return 1
    print(f"removed {args.name!r}" + (" from the crontab" if in_cron else "")
          + (f"; deleted {', '.join(p.name for p in units)}" if units else ""))
    return 0


# ----------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="kNN + linear probe of an encoder vs random-init and raw pixels",
        description="Score a trained encoder on labelled shards: weighted kNN (eval.knn_k, "
        "eval.knn_t, cosine) and a linear probe on frozen features, next to a random-init "
        "encoder of the same architecture and raw pixels. Logs a new MLflow run and tags the "
        "model version. The config is the training run's params unless --config is given.")
    p.add_argument("model", help="models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, "
                   "runs:/RUN_ID or a run id")
    p.add_argument("--data", default=None, metavar="DATASET",
                   help="labelled shards with DATASET/train (kNN bank, probe train) and "
                   "DATASET/test (queries, probe test), e.g. s3://corpus/fmnist")
    p.add_argument("--train-data", default=None, metavar="URI", help="override DATASET/train")
    p.add_argument("--test-data", default=None, metavar="URI", help="override DATASET/test")
    p.add_argument("--config", default=None, help="TOML config instead of the run's params")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--no-log", action="store_true", help="print only; log nothing to MLflow")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from pipeline import evaluate_model as em
    from pipeline.tracking import resolve_tracking_uri

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # The tracking server comes from --config's [mlflow] or MLFLOW_TRACKING_URI (the run's own
    # params are only read once we have reached a server).
    uri = resolve_tracking_uri(load_config(args.config).mlflow)
    loaded = em.load_encoder(args.model, config=args.config, overrides=args.overrides,
                             tracking_uri=uri)
    train, test = em.split_data(args.data, args.train_data, args.test_data, loaded.cfg)
    report = em.compare(loaded.backbone, loaded.cfg, train_uri=train, test_uri=test,
                        device=device)
    eval_run = None if args.no_log else em.log_report(loaded, report, uri)
    if args.json:
        print(json.dumps({"model": loaded.label, "source_run": loaded.run_id,
                          "eval_run": eval_run, "knn_top1": report.knn,
                          "probe_top1": report.probe, "train": train, "test": test,
                          "n_train": report.n_train, "n_test": report.n_test}, indent=2))
        return 0
    print(em.format_table(report, loaded.label))
    if eval_run:
        print(f"logged: run {eval_run}" + (f"; tags on {loaded.model_name} v{loaded.model_version}"
                                           if loaded.model_name else ""))
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mocopipe",
        description="Distributed MoCo v2 pretraining: S3 shards -> Ray readers -> Ray Train -> MLflow",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add in (_add_config, _add_stack, _add_shards, _add_train, _add_bench, _add_jobs,
                _add_evaluate):
        add(sub)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, printed as one line (no traceback)."""
    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError, PermissionError]
    for mod, name in (("pipeline.storage", "StorageError"),
                      ("pipeline.shards.manifest", "ManifestError"),
                      ("pipeline.stack", "StackError"),
                      ("pipeline.tracking", "TrackingError")):
        try:
            errors.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("mocopipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line
        if isinstance(exc, _known_errors()):
            print(f"mocopipe: error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
