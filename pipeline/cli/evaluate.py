"""`mocopipe evaluate`: kNN + linear probe of a registered encoder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.config import load_config


def add_evaluate(sub: Any) -> None:
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

    from pipeline.eval import evaluate as em
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
