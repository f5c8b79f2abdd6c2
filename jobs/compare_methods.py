"""Measure the methods side by side on Fashion-MNIST (issue 16's table).

For each method config and seed: `mocopipe train CONFIG` (2 workers on the stack the
environment points at), then for the first seed of each method `mocopipe evaluate` (kNN with
the full 60k bank / 10k queries, linear probe, random init, raw pixels) and `mocopipe
finetune --fractions 0.01,0.1` (vs random init). Every step is the plain CLI command printed
before it runs, so each row can be rerun by hand; results go to one JSON line per step in
`--out` (a rerun skips the steps already there).

Seed noise of the 1%-label fine-tune: `--finetune-seeds 0,1,2` also fine-tunes the model of
`--finetune-model-seed` (default: the first of `--seeds`) on 1% of the labels once per
fine-tune seed (`mocopipe finetune ... --fractions 0.01 --seed S`: a different class-balanced
subset, head and random init each time), and the table adds mean and standard deviation over
those seeds, pretrained and random init, and the margin between them.

    eval "$(.venv/bin/mocopipe env)"          # a stack with s3://corpus/fmnist written
    .venv/bin/python jobs/compare_methods.py --seeds 0,1 --finetune-seeds 0,1,2 --out compare.jsonl
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"moco_v2": "jobs/configs/demo.toml", "simclr": "jobs/configs/simclr_fmnist.toml",
           "moco_v3": "jobs/configs/mocov3_fmnist.toml"}
DATA = "s3://corpus/fmnist"


def _last_json(stdout: str) -> dict[str, Any] | None:
    """The last JSON object printed (one line, or indented over several)."""
    lines = stdout.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return dict(json.loads("\n".join(lines[i:])))
            except json.JSONDecodeError:
                continue
    return None


def _key(r: dict[str, Any]) -> tuple[str, int, str, int | None, str]:
    return (r["method"], r["seed"], r["step"], r.get("finetune_seed"), r.get("overrides", ""))


def _done(out: Path) -> set[tuple[str, int, str, int | None, str]]:
    """(method, seed, step, fine-tune seed, overrides) already recorded in `out`: a rerun
    skips them."""
    if not out.exists():
        return set()
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {_key(r) for r in rows}


def _run(cmd: list[str], out: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    if _key(record) in _done(out):
        print(f"already in {out}: {record}", flush=True)
        return None
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall = round(time.monotonic() - t0, 1)
    summary = _last_json(proc.stdout)
    if proc.returncode != 0 or summary is None:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"compare_methods: {cmd[3]} failed (exit {proc.returncode})")
    result = {**record, "command": shlex.join(cmd), "wall_s": wall, **summary}
    with out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    return result


def table(out: Path) -> str:
    """The Markdown table of what `out` holds: one row per method."""
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    methods = list(dict.fromkeys(r["method"] for r in rows))

    def pick(method: str, step: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["method"] == method and r["step"] == step]

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [("| method | kNN top-1 per seed (train run) | kNN (evaluate) | linear probe | "
              "fine-tune 1% (random init) | fine-tune 10% (random init) | train wall |"),
             "|---|---|---|---|---|---|---|"]
    base: dict[str, Any] = {}
    for m in methods:
        trains = sorted(pick(m, "train"), key=lambda r: r["seed"])
        knn_seeds = " / ".join(
            f"{f(r.get('knn_top1'))} (s{r['seed']}"
            + (f", {r['overrides']})" if r.get("overrides") else ")") for r in trains)
        ev = (pick(m, "evaluate") or [{}])[0]
        knn, probe = ev.get("knn_top1") or {}, ev.get("probe_top1") or {}
        base = base or {"knn": knn, "probe": probe}
        ft = {r["fraction"]: r for r in (pick(m, "finetune") or [{}])[0].get("rows", [])}
        cells = [f"{f(ft[x]['pretrained_top1'])} ({f(ft[x]['random_top1'])})" if x in ft
                 else "-" for x in (0.01, 0.1)]
        walls = " / ".join(f"{r['wall_s'] / 60:.1f} min" for r in trains)
        lines.append(f"| {m} | {knn_seeds} | {f(knn.get('model'))} | {f(probe.get('model'))} "
                     f"| {cells[0]} | {cells[1]} | {walls} |")
    for row in ("random_init", "raw_pixels"):
        if row in base.get("knn", {}):
            lines.append(f"| {row.replace('_', ' ')} | | {f(base['knn'].get(row))} "
                         f"| {f(base['probe'].get(row))} | | | |")
    def mean_sd(xs: list[float]) -> str:
        sd = f"{statistics.stdev(xs):.3f}" if len(xs) > 1 else "-"
        return f"{statistics.fmean(xs):.3f} ({sd})"

    noise = [m for m in methods if pick(m, "finetune_1pct")]
    if noise:
        lines += ["", ("| method (model seed) | fine-tune seeds | 1% pretrained mean (sd) | "
                       "1% random init mean (sd) | margin (sd of the per-seed differences) | "
                       "per seed: pretrained / random |"),
                  "|---|---|---|---|---|---|"]
    for m in noise:
        runs = sorted(pick(m, "finetune_1pct"), key=lambda r: r["finetune_seed"])
        pre = [r["rows"][0]["pretrained_top1"] for r in runs]
        rnd = [r["rows"][0]["random_top1"] for r in runs]
        per = ", ".join(f"s{r['finetune_seed']}: {p:.3f} / {q:.3f}"
                        for r, p, q in zip(runs, pre, rnd, strict=True))
        diff = mean_sd([p - q for p, q in zip(pre, rnd, strict=True)])
        lines.append(f"| {m} (s{runs[0]['seed']}) | {len(runs)} | {mean_sd(pre)} | "
                     f"{mean_sd(rnd)} | {'+' if diff[0] != '-' else ''}{diff} | {per} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(CONFIGS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=Path("compare.jsonl"))
    ap.add_argument("--prefix", default="cmp")
    ap.add_argument("--no-eval", action="store_true", help="train only (kNN per seed)")
    ap.add_argument("--finetune-seeds", default="",
                    help="also fine-tune on 1%% of the labels once per seed (seed noise)")
    ap.add_argument("--finetune-model-seed", type=int, default=None,
                    help="the training seed whose model --finetune-seeds fine-tunes "
                         "(default: the first of --seeds)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="SECTION.KEY=VALUE",
                    help="config override for the train runs (repeatable), e.g. a tuning trial: "
                         "--methods simclr --seeds 0 --no-eval --prefix t02 "
                         "--set simclr.temperature=0.2 --out tune.jsonl")
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    moco = [sys.executable, "-m", "pipeline.cli"]
    seeds = [int(s) for s in args.seeds.split(",")]
    model_seed = seeds[0] if args.finetune_model_seed is None else args.finetune_model_seed
    extra = [x for o in args.overrides for x in ("--set", o)]
    for method in args.methods.split(","):
        for i, seed in enumerate(seeds):
            name = f"{args.prefix}-{method}-s{seed}"
            model = f"{name}-encoder"
            _run([*moco, "train", CONFIGS[method], "--set", f"train.seed={seed}",
                  "--set", f'ray.run_name="{name}"', "--set", f'mlflow.registered_model="{model}"',
                  *extra, "--json"], args.out,
                 {"method": method, "seed": seed, "step": "train",
                  **({"overrides": " ".join(args.overrides)} if args.overrides else {})})
            if i or args.no_eval:
                continue
            _run([*moco, "evaluate", f"models:/{model}/1", "--data", DATA, "--json"], args.out,
                 {"method": method, "seed": seed, "step": "evaluate"})
            _run([*moco, "finetune", f"models:/{model}/1", "--data", DATA,
                  "--fractions", "0.01,0.1", "--workers", "2", "--json"], args.out,
                 {"method": method, "seed": seed, "step": "finetune"})
        for fs in (int(s) for s in args.finetune_seeds.split(",") if s.strip()):
            _run([*moco, "finetune", f"models:/{args.prefix}-{method}-s{model_seed}-encoder/1",
                  "--data", DATA, "--fractions", "0.01", "--seed", str(fs), "--workers", "2",
                  "--json"], args.out, {"method": method, "seed": model_seed,
                                        "step": "finetune_1pct", "finetune_seed": fs})
    print(table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
