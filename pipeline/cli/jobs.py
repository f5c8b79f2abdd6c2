"""`mocopipe submit`, `jobs ls|logs|stop`, `nightly`, `schedule install|ls|remove`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.cli.common import cluster_args, config_args
from pipeline.config import ConfigError, load_config


def add_jobs(sub: Any) -> None:
    """submit, jobs ls|logs|stop, nightly, schedule install|ls|remove."""
    p = sub.add_parser("submit", help="run a job on a Ray cluster (CONFIG: a path or a shipped name)")
    config_args(p)
    cluster_args(p)
    p.add_argument("--forward-secrets", action="store_true",
                   help="ALSO copy this shell's credentials (AWS keys, MLflow password/token) "
                        "into the job's runtime_env, where the dashboard shows them (warned)")
    p.add_argument("--submission-id", default=None, help="job id (default: Ray generates one)")
    p.add_argument("--module", default="jobs.pretrain",
                   help="entrypoint module run as `python -m MODULE --config ...`")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("jobs", help="list, follow and stop Ray jobs")
    s = p.add_subparsers(dest="jobs_cmd", required=True)
    q = s.add_parser("ls", help="jobs on the cluster, newest first")
    q.add_argument("--address", default=None, help="Ray dashboard URL (default: RAY_ADDRESS)")
    q.set_defaults(func=_cmd_jobs_ls)
    q = s.add_parser("logs", help="print a job's logs")
    q.add_argument("id", help="submission id")
    q.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    q.add_argument("--address", default=None, help="Ray dashboard URL (default: RAY_ADDRESS)")
    q.set_defaults(func=_cmd_jobs_logs)
    q = s.add_parser("stop", help="stop a job")
    q.add_argument("id", help="submission id")
    q.add_argument("--address", default=None, help="Ray dashboard URL (default: RAY_ADDRESS)")
    q.set_defaults(func=_cmd_jobs_stop)

    p = sub.add_parser("nightly", help="submit tonight's incremental run (one per config and date)")
    config_args(p)
    cluster_args(p)
    p.add_argument("--date", default=None, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--local", action="store_true",
                   help="run the night in this process instead of submitting a Ray job")
    p.set_defaults(func=_cmd_nightly)

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
    q.set_defaults(func=_cmd_schedule_install)
    q = s.add_parser("ls", help="schedules installed by mocopipe")
    q.set_defaults(func=_cmd_schedule_ls)
    q = s.add_parser("remove", help="remove a schedule (crontab entry and systemd units)")
    q.add_argument("name", help="schedule name (the config's train.name)")
    q.set_defaults(func=_cmd_schedule_remove)


def _wait_for(client: Any, sid: str, started: float) -> int:
    import time

    from pipeline.orchestrate import submit as jobs

    result = jobs.wait(client, sid)
    if result.first_step_at is not None:
        print(f"first training step logged {result.first_step_at - started:.1f} s after "
              "submission", flush=True)
    print(f"job {sid} {result.status} ({time.time() - started:.1f} s after submission)",
          flush=True)
    return jobs.exit_code(result.status)


def _cmd_submit(args: argparse.Namespace) -> int:
    import os
    import time

    from pipeline.envvars import forwarded_names
    from pipeline.orchestrate import submit as jobs

    cfg = load_config(args.config, args.overrides)  # a bad config never reaches the cluster
    if args.module == "jobs.pretrain":
        from pipeline.train.preflight import preflight

        # One-line errors before the cluster; the placement check runs in the job's driver.
        preflight(cfg, ray_address=args.address or None, placement=False)
    client = jobs.connect(args.address or cfg.ray.address or None)
    names = () if args.no_forward_env else forwarded_names(secrets=args.forward_secrets)
    spec = jobs.JobSpec(module=args.module, config=args.config, overrides=args.overrides)
    started = time.time()
    sid = jobs.submit(client, spec, submission_id=args.submission_id, env_names=names)
    shown = ", ".join(n for n in names if os.environ.get(n)) or "none"
    code = ("this checkout's pipeline/ and jobs/ (py_modules)" if jobs.is_checkout()
            else "the mocopipe installed on the cluster")
    print(f"submitted {sid}: {jobs.build_entrypoint(spec)}\n  code: {code}; "
          f"env_vars: [{shown}] + MOCOPIPE_GIT_SHA", flush=True)
    return _wait_for(client, sid, started) if args.wait else 0


def _cmd_jobs_ls(args: argparse.Namespace) -> int:
    from pipeline.orchestrate import submit as jobs

    print(jobs.format_jobs(jobs.list_jobs(jobs.connect(args.address))))
    return 0


def _cmd_jobs_logs(args: argparse.Namespace) -> int:
    from pipeline.orchestrate import submit as jobs

    client = jobs.connect(args.address)
    if args.follow:
        return jobs.exit_code(jobs.wait(client, args.id).status)
    print(jobs.logs(client, args.id), end="")
    return 0


def _cmd_jobs_stop(args: argparse.Namespace) -> int:
    from pipeline.orchestrate import submit as jobs

    running = jobs.stop(jobs.connect(args.address), args.id)
    print(f"{args.id}: {'stop requested' if running else 'was not running'}")
    return 0


def _cmd_nightly(args: argparse.Namespace) -> int:
    import time

    from pipeline.orchestrate import nightly, submit as jobs
    from pipeline.orchestrate.nightly_plan import parse_date

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

    from pipeline.orchestrate import cron as schedule
    from pipeline.orchestrate.submit import PROJECT_ROOT, is_checkout

    name = load_config(args.config).train.name
    logs = Path.home() / ".mocopipe" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("mocopipe")
    mocopipe = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]
    root = PROJECT_ROOT if is_checkout() else Path.home()  # installed: no checkout to cd into
    cmd = schedule.nightly_command(args.config, root=root, mocopipe=mocopipe,
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
    from pipeline.orchestrate import cron as schedule

    entries = schedule.list_cron(schedule.Crontab.default()) + schedule.list_systemd()
    for e in entries:
        print(f"{e.name:<20} {e.kind:<8} {e.when:<28} {e.where}\n    {e.command}")
    if not entries:
        print("no schedules (mocopipe schedule install --cron \"0 2 * * *\" CONFIG)")
    return 0


def _cmd_schedule_remove(args: argparse.Namespace) -> int:
    from pipeline.orchestrate import cron as schedule

    in_cron = schedule.remove_cron(schedule.Crontab.default(), args.name)
    units = schedule.remove_systemd(args.name)
    if not in_cron and not units:
        print(f"no schedule named {args.name!r}", file=sys.stderr)
        return 1
    print(f"removed {args.name!r}" + (" from the crontab" if in_cron else "")
          + (f"; deleted {', '.join(p.name for p in units)}" if units else ""))
    return 0
