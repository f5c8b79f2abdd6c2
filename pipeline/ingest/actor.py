"""`ReaderActor`: `ShardReader` as a Ray actor, placed by the ingest config.

Readers ask for ``ingest.reader_num_cpus`` CPUs and ``ingest.reader_resources`` (custom
resources, e.g. ``{"reader": 0.01}`` to keep them on the nodes that offer ``reader``). A
train worker's readers prefer its own node when it offers those resources, else spread over
the nodes that do (`pipeline.ingest.placement`). Their batches travel through the Ray object
store as numpy arrays (zero-copy reads on the same node; a transfer between object stores
otherwise).
"""

from __future__ import annotations

import time

from typing import Any

import ray

from pipeline.config import IngestConfig
from pipeline.ingest.placement import (actor_nodes, config_requests, reader_strategy,
                                       require_resources)
from pipeline.ingest.reader import ShardReader

ReaderActor = ray.remote(ShardReader)
# Time for a placed reader's worker process to start (a new Python process that imports
# the ingest stack; tens of seconds on a busy machine), on top of ingest.placement_timeout_s.
ACTOR_START_S = 120.0


def start_reader_actor(ingest: IngestConfig, *, strategy: Any = "DEFAULT",
                       **kwargs: Any) -> Any:
    """Start one reader actor; ``kwargs`` are `ShardReader`'s other constructor arguments.

    The actor inherits its worker's environment (S3 credentials come from there, as for any
    `Storage`); the endpoint travels in the `StorageConfig`. `strategy`: a Ray scheduling
    strategy (see `start_readers`).

    Returns the actor handle. ``max_restarts=0``: a reader that dies fails the epoch loudly
    (the train worker restarts from its checkpoint, which holds the data cursor).
    """
    options: dict[str, Any] = {"num_cpus": ingest.reader_num_cpus, "max_restarts": 0,
                               "scheduling_strategy": strategy}
    if ingest.reader_resources:
        options["resources"] = dict(ingest.reader_resources)
    return ReaderActor.options(**options).remote(ingest=ingest, **kwargs)


def start_readers(n: int, kwargs: dict[str, Any], *, rank: int) -> tuple[list[Any], dict[str, Any]]:
    """Start the `n` readers of train worker `rank` (``kwargs`` as `start_reader_actor`'s).

    Fails with ResourceUnavailableError (one line, naming ``ingest.reader_resources`` and
    the resource) when no node offers the reader resources within
    ``ingest.placement_timeout_s``, instead of waiting forever. Returns the actors and the
    placement ``{"rank", "node", "readers": [node id per reader], "strategy"}``, also
    printed once as one ``[mocopipe] placement`` line.
    """
    from ray.exceptions import RayActorError

    ingest: IngestConfig = kwargs["ingest"]
    for attempt in range(3):
        require_resources(config_requests(ingest.reader_resources, {}),
                          timeout_s=ingest.placement_timeout_s)
        node_id = ray.get_runtime_context().get_node_id()
        strategy = reader_strategy(ingest.reader_resources, node_id, ray.nodes())
        actors = [start_reader_actor(strategy=strategy, **kwargs) for _ in range(n)]
        try:
            nodes = actor_nodes(actors, timeout_s=ingest.placement_timeout_s + ACTOR_START_S,
                                what=f"ingest.reader_resources={dict(ingest.reader_resources)}")
            break
        except RayActorError:
            # placed on a node that died before Ray noticed (missed heartbeats): look again;
            # if no alive node offers the resources any more, require_resources says so
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if attempt == 2:
                raise
            time.sleep(5.0)
        except BaseException:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            raise
    how = "spread" if strategy == "SPREAD" else "own node"
    placement = {"rank": rank, "node": node_id, "readers": nodes, "strategy": how}
    print(f"[mocopipe] placement: rank {rank} on node {node_id[:12]}; readers ({how}) on "
          f"{', '.join(x[:12] for x in nodes)}", flush=True)
    return actors, placement
