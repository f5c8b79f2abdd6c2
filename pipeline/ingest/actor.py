"""`ReaderActor`: `ShardReader` as a Ray actor, placed by the ingest config.

Readers ask for ``ingest.reader_num_cpus`` CPUs and ``ingest.reader_resources`` (custom
resources, e.g. ``{"cpu_node": 0.1}`` to pin them to CPU-only nodes). Their batches travel
through the Ray object store as numpy arrays (zero-copy reads on the same node).
"""

from __future__ import annotations

from typing import Any

import ray

from pipeline.config import IngestConfig
from pipeline.ingest.reader import ShardReader

ReaderActor = ray.remote(ShardReader)


def start_reader_actor(ingest: IngestConfig, **kwargs: Any) -> Any:
    """Start one reader actor; ``kwargs`` are `ShardReader`'s other constructor arguments.

    The actor inherits its worker's environment (S3 credentials come from there, as for any
    `Storage`); the endpoint travels in the `StorageConfig`.

    Returns the actor handle. ``max_restarts=0``: a reader that dies fails the epoch loudly
    (the train worker restarts from its checkpoint, which holds the data cursor).
    """
    options: dict[str, Any] = {"num_cpus": ingest.reader_num_cpus, "max_restarts": 0}
    if ingest.reader_resources:
        options["resources"] = dict(ingest.reader_resources)
    return ReaderActor.options(**options).remote(ingest=ingest, **kwargs)
