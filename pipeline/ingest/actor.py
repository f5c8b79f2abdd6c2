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


def start_reader_actor(ingest: IngestConfig, *, runtime_env: dict[str, Any] | None = None,
                       **kwargs: Any) -> Any:
    """Start one reader actor; ``kwargs`` are `ShardReader`'s constructor arguments.

    ``runtime_env`` (e.g. ``{"env_vars": {...}}``) passes the S3 credentials of the caller's
    environment to the actor's process, wherever Ray places it.

    Returns the actor handle. ``max_restarts=0``: a reader that dies fails the epoch loudly
    (the train worker restarts from its checkpoint, which holds the data cursor).
    """
    options: dict[str, Any] = {"num_cpus": ingest.reader_num_cpus, "max_restarts": 0}
    if ingest.reader_resources:
        options["resources"] = dict(ingest.reader_resources)
    if runtime_env:
        options["runtime_env"] = runtime_env
    return ReaderActor.options(**options).remote(ingest=ingest, **kwargs)
