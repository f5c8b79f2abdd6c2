"""`mocopipe up|down|status|env`: the local stack on loopback."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.common import state_dir_arg


def add_stack(sub: Any) -> None:
    p = sub.add_parser("up", help="start the local stack (SeaweedFS S3, MLflow, Ray head)")
    state_dir_arg(p)
    for name in ("s3", "mlflow", "ray_gcs", "ray_dashboard"):
        p.add_argument(f"--{name.replace('_', '-')}-port", dest=f"port_{name}", type=int,
                       default=None, help=f"fixed port for {name} (default: a free one)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per health check")
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the Ray head")
    p.add_argument("--reader-nodes", type=int, default=0, metavar="N",
                   help="also start N Ray nodes offering the resource 'reader' (the head "
                        "then offers only 'trainer')")
    p.set_defaults(func=_cmd_up)
    p = sub.add_parser("down", help="stop the local stack by PID (data is kept)")
    state_dir_arg(p)
    p.add_argument("--purge", action="store_true", help="also delete the state dir (all data)")
    p.set_defaults(func=_cmd_down)
    p = sub.add_parser("status", help="print the stack's endpoints and health")
    state_dir_arg(p)
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("env", help="print `export ...` lines to reach the stack (eval them)")
    state_dir_arg(p)
    p.set_defaults(func=_cmd_env)


def _cmd_up(args: argparse.Namespace) -> int:
    from pipeline.stack import local as stack

    ports = {k[len("port_"):]: v for k, v in vars(args).items()
             if k.startswith("port_") and v is not None}
    state = stack.up(args.state_dir, ports=ports, timeout_s=args.timeout,
                     num_cpus=args.num_cpus, reader_nodes=args.reader_nodes,
                     log=lambda m: print(m, flush=True))
    print(f"stack up in {state.startup_s:.1f}s (state: {state.state_dir})")
    print(f"  S3      {state.s3_endpoint}  buckets: {', '.join(state.buckets)}")
    print(f"  MLflow  {state.mlflow_uri}")
    print(f"  Ray     {state.ray_address}  dashboard/jobs: {state.ray_dashboard}")
    for node in state.reader_nodes:
        print(f"          + reader node {node['name']} ({node['node_id']})")
    print(f"reach it from a shell with:  eval \"$(mocopipe env --state-dir {args.state_dir})\"")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from pipeline.stack import local as stack

    stopped = stack.down(args.state_dir, purge=args.purge)
    print(f"stopped {len(stopped)} process(es)" + (f"; deleted {args.state_dir}"
                                                   if args.purge else "; data kept"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.stack import local as stack

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
    if health["ray"]:
        _print_nodes(args.state_dir)
    return 0 if all(health.values()) else 1


def _print_nodes(state_dir: str) -> None:
    """One line per Ray node: name, state, id, custom and CPU resources."""
    from pipeline.stack.nodes import list_nodes

    for node in list_nodes(state_dir):
        res = node["resources"]
        shown = {k: v for k, v in res.items() if k == "CPU" or not (
            k.startswith("node:") or k in ("memory", "object_store_memory"))}
        text = ", ".join(f"{k}={v:g}" for k, v in sorted(shown.items()))
        print(f"  node {node['name']:<6} {node['state']:<5} {node['node_id'][:12]}  {text}")


def _cmd_env(args: argparse.Namespace) -> int:
    import shlex

    from pipeline.stack import local as stack

    for key, value in stack.stack_env(args.state_dir).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
