"""Checkpoint transport: save time per GB through the MLflow server's artifact proxy vs
straight to the object store (the MLflow client writes to `s3://` itself when that is the
run's artifact root), at ResNet-50-size state.

    python -m pipeline.bench.checkpoint [--mb 400] [--rounds 2]      # against MLflow + S3
    python -m pipeline.bench.checkpoint --dry                         # local folder, 8 MB

The state is synthetic (random float32 tensors packed like a checkpoint's `state.pt` and
`ranks.pt`); each round saves one full checkpoint with `CheckpointManager.save(last=True)`
(upload, marker, prune) into a fresh run of each kind, alternating proxy and direct so a
burst of load hits both alike, and checks that MLflow lists the committed files for both.
The result is MB/s and seconds per GB per transport (median of the rounds) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch

from pipeline.train.checkpoint import CheckpointManager, pack, step_dir
from pipeline.train.services import ArtifactRepo, LocalArtifacts


def synthetic_files(mb: int, seed: int = 0) -> dict[str, bytes]:
    """A checkpoint's files holding about `mb` MB of float32 tensors (98% in state.pt)."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, mb * 1024 * 1024 // 4 // 8)  # eight tensors
    state = {"model": {f"w{i}": torch.randn(n, generator=g) for i in range(8)}, "step": 1}
    return {"state.pt": pack(state), "ranks.pt": pack([{"rng": torch.randn(1000, generator=g)}])}


def time_save(repo: ArtifactRepo, files: dict[str, bytes]) -> float:
    """Seconds for one committed checkpoint (upload + marker + prune) into `repo`."""
    mgr = CheckpointManager(repo, every_steps=1, keep=1, async_upload=False)
    t0 = time.perf_counter()
    mgr.save(1, files, last=True)
    seconds = time.perf_counter() - t0
    if mgr.latest_step() != 1:
        raise RuntimeError(f"{step_dir(1)}: not listed as complete after the save")
    return seconds


def mlflow_lists(repo: ArtifactRepo) -> bool:
    """True when the MLflow tracking server lists the committed checkpoint of `repo`'s run."""
    from mlflow import MlflowClient

    run_id, uri = getattr(repo, "run_id"), getattr(repo, "tracking_uri")
    names = {i.path.rsplit("/", 1)[-1]
             for i in MlflowClient(tracking_uri=uri).list_artifacts(run_id, step_dir(1))}
    return {"state.pt", "ranks.pt", "COMPLETE"} <= names


def bench(repos: dict[str, Callable[[], ArtifactRepo]], mb: int, rounds: int,
          listed: Callable[[ArtifactRepo], bool] | None = None) -> dict[str, Any]:
    """Median seconds / MB/s / s per GB for each transport; fresh repo per round.
    listed(repo): whether the run's tracking server lists the checkpoint (recorded)."""
    files = synthetic_files(mb)
    size_mb = sum(len(d) for d in files.values()) / 2**20
    times: dict[str, list[float]] = {name: [] for name in repos}
    seen: dict[str, bool] = {name: True for name in repos}
    for _ in range(rounds):
        for name, make in repos.items():
            repo = make()
            times[name].append(time_save(repo, files))
            seen[name] = seen[name] and (listed is None or listed(repo))
    out: dict[str, Any] = {"state_mb": round(size_mb, 1), "rounds": rounds}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"seconds": [round(t, 2) for t in ts], "mb_per_s": round(size_mb / med, 1),
                     "s_per_gb": round(med / (size_mb / 1024), 2), "listed": seen[name]}
    names = list(repos)
    if len(names) == 2:
        a, b = names
        out[f"{b}_speedup"] = round(out[a]["s_per_gb"] / out[b]["s_per_gb"], 2)
    return out


def mlflow_repos(tracking_uri: str, direct_root: str) -> dict[str, Callable[[], ArtifactRepo]]:
    """'proxy': runs of an experiment with the server's default (proxied) artifact root;
    'direct': runs of an experiment whose artifact location is `direct_root` (s3://...)."""
    from mlflow import MlflowClient

    from pipeline.train.services import MlflowArtifacts

    client = MlflowClient(tracking_uri=tracking_uri)
    tag = uuid.uuid4().hex[:8]
    proxied = client.create_experiment(f"bench-ckpt-proxy-{tag}")
    direct = client.create_experiment(f"bench-ckpt-direct-{tag}",
                                      artifact_location=f"{direct_root.rstrip('/')}/{tag}")

    def make(exp_id: str) -> Callable[[], ArtifactRepo]:
        def new() -> ArtifactRepo:
            run = client.create_run(exp_id)
            return MlflowArtifacts(run.info.run_id, tracking_uri)
        return new

    return {"proxy": make(proxied), "direct": make(direct)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench.checkpoint",
                                description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=400, help="checkpoint size in MB (400)")
    p.add_argument("--rounds", type=int, default=2, help="saves per transport (2)")
    p.add_argument("--direct-root", default="s3://mlflow/bench-checkpoint",
                   help="artifact location of the direct-to-S3 experiment")
    p.add_argument("--dry", action="store_true", help="two local folders, 8 MB, no server")
    args = p.parse_args(argv)
    if args.dry:
        tmp = tempfile.mkdtemp(prefix="mocopipe-bench-ckpt-")
        repos: dict[str, Callable[[], ArtifactRepo]] = {
            "proxy": lambda: LocalArtifacts(f"{tmp}/a-{uuid.uuid4().hex[:6]}"),
            "direct": lambda: LocalArtifacts(f"{tmp}/b-{uuid.uuid4().hex[:6]}")}
        result = bench(repos, mb=min(args.mb, 8), rounds=args.rounds)
    else:
        from pipeline.config import MlflowConfig
        from pipeline.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(MlflowConfig())
        result = bench(mlflow_repos(uri, args.direct_root), mb=args.mb, rounds=args.rounds,
                       listed=mlflow_lists)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
