"""Run one epoch of an in-process `Loader` and print its peak RSS (for the memory test).

Usage: ``python -m tests.ingest.rss_probe '{"uri": ..., "shards": [[key, n], ...], ...}'``
prints ``{"peak_rss": bytes, "streaming_peak_rss": bytes, "samples": n}``: the process's
lifetime peak, and the peak sampled (every 10 ms) while the epoch streams, which import-time
peaks cannot mask. S3 settings come from the environment.
"""

from __future__ import annotations

import json
import resource
import sys
import threading

import psutil

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan


def main() -> None:
    args = json.loads(sys.argv[1])
    loader = Loader(DataConfig(image_size=16, train=args["uri"]),
                    IngestConfig(readers_per_worker=2, shuffle_window=32, read_ahead_mb=4),
                    AugmentConfig(), LoaderPlan([tuple(s) for s in args["shards"]],
                                                per_rank_batch=8, seed=0),
                    storage=StorageConfig(endpoint_url=args["endpoint"]), use_ray=False)
    me, done, streaming_peak = psutil.Process(), threading.Event(), [0]

    def sample() -> None:
        while not done.wait(0.01):
            streaming_peak[0] = max(streaming_peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    samples = sum(len(b["keys"]) for b in loader.epoch(0))
    done.set()
    sampler.join()
    loader.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"peak_rss": peak, "streaming_peak_rss": streaming_peak[0],
                      "samples": samples}))


if __name__ == "__main__":
    main()
