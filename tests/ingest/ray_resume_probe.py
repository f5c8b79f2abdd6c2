"""Resume across torn-down Ray reader actors, in a fresh process (for test_ingest_s3).

Usage: ``python -m tests.ingest.ray_resume_probe '{"uri": ..., "shards": [[key, n], ...],
"stop": 7}'`` with RAY_ADDRESS / AWS_* in the environment. Runs the epoch three ways and
prints, per run, the batches' keys and a sha256 of their pixels:
``reference`` (in-process readers, uninterrupted), ``resumed`` (Ray actors: ``stop``
batches, state saved, actors killed, new actors restored from the state, rest of the epoch).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import ray

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan


def _loader(args: dict[str, Any], use_ray: bool) -> Loader:
    return Loader(DataConfig(image_size=16, train=args["uri"]),
                  IngestConfig(readers_per_worker=2, reader_num_cpus=0.25,
                               shuffle_window=32, batches_in_flight=3),
                  AugmentConfig(), LoaderPlan([tuple(s) for s in args["shards"]],
                                              per_rank_batch=8, seed=3),
                  storage=StorageConfig(), use_ray=use_ray)


def _digest(batches: list[dict[str, Any]]) -> dict[str, Any]:
    return {"keys": [b["keys"] for b in batches],
            "pixels": [hashlib.sha256(b["view1"].numpy().tobytes()
                                      + b["view2"].numpy().tobytes()).hexdigest()
                       for b in batches]}


def main() -> None:
    args = json.loads(sys.argv[1])
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        reference = list(_loader(args, use_ray=False).epoch(1))
        first = _loader(args, use_ray=True)
        pids = first.reader_pids()
        it = first.epoch(1)
        head = [next(it) for _ in range(args["stop"])]
        state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
        first.close()  # kills the reader actors
        second = _loader(args, use_ray=True)
        new_pids = second.reader_pids()
        second.load_state_dict(state)
        rest = list(second.epoch(1))
        metrics = second.metrics()
        second.close()
    finally:
        ray.shutdown()
    print(json.dumps({"reference": _digest(reference), "resumed": _digest(head + rest),
                      "state": state, "pids": [pids, new_pids], "metrics": metrics,
                      "pid": os.getpid()}))


if __name__ == "__main__":
    main()
