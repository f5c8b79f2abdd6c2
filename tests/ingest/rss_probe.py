"""Run one epoch of an in-process `Loader` and print its peak RSS (for the memory test).

Usage: ``python -m tests.ingest.rss_probe '{"uri": ..., "shards": [[key, n], ...], ...}'``
prints ``{"peak_rss": bytes, "samples": n}``. S3 settings come from the environment.
"""

from __future__ import annotations

import json
import resource
import sys

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader


def main() -> None:
    args = json.loads(sys.argv[1])
    loader = Loader(storage=StorageConfig(endpoint_url=args["endpoint"]),
                    data=DataConfig(image_size=16), augment=AugmentConfig(),
                    ingest=IngestConfig(readers_per_worker=2, shuffle_window=32, read_ahead_mb=4),
                    dataset_uri=args["uri"], shards=[tuple(s) for s in args["shards"]],
                    rank=0, world_size=1, per_rank_batch=8, seed=0, use_ray=False)
    samples = sum(len(b["keys"]) for b in loader.epoch(0))
    loader.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"peak_rss": peak, "samples": samples}))


if __name__ == "__main__":
    main()
