"""Readers on the trainer's node vs on a reader node: batches/s and bytes moved between nodes.

One consumer task stands in for a train worker: it runs on a node offering the training
resource (``ray.resources_per_worker``, default ``{trainer = 0.01}``), builds the config's
`Loader` (rank 0 of ``ray.num_workers``) and pulls ``batches`` batches as fast as it can,
without training, so the figure is the ingest path's ceiling. Two placements alternate in
the same run (``rounds`` times each, so both see the same machine load):

- ``local``: no reader resources: the readers land on the consumer's own node (soft
  node affinity), batches are read from the local object store (zero-copy);
- ``remote``: ``reader_resources`` (default ``{reader = 0.01}``): the readers land on a
  reader node, every batch is pulled across into the consumer node's object store.

Bytes moved between nodes are the batch arrays (``view1`` + ``view2``) of the batches whose
reader ran on another node than the consumer (Ray moves each such object once; the keys and
counters riding along are a few hundred bytes more). The wall time of the first batch
(actor start, first S3 request) is left out.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from pipeline.config import Config


def _consume(cfg_dict: dict[str, Any], shards: list[tuple[str, int]],
             reader_resources: dict[str, float], batches: int) -> dict[str, Any]:
    """Pull `batches` batches through a Loader whose readers ask for `reader_resources`."""
    import ray

    from pipeline.config import from_dict
    from pipeline.ingest.loader import Loader, LoaderPlan

    cfg = from_dict(cfg_dict)
    ingest = dataclasses.replace(cfg.ingest, reader_resources=dict(reader_resources))
    here = ray.get_runtime_context().get_node_id()
    loader = Loader(cfg.data, ingest, cfg.augment,
                    LoaderPlan(shards, rank=0, world_size=cfg.ray.num_workers,
                               per_rank_batch=cfg.train.per_worker_batch, seed=cfg.train.seed),
                    storage=cfg.storage)
    readers = loader.placement["readers"]
    moved = done = 0
    try:
        it = loader.epoch(0)
        next(it)  # warm-up: actor start and first S3 request
        t0 = time.perf_counter()
        for batch in it:
            if readers[batch["step"] % len(readers)] != here:
                moved += sum(int(batch[k].numel() * batch[k].element_size())
                             for k in ("view1", "view2"))
            done += 1
            if done >= batches:
                break
        wall = time.perf_counter() - t0
    finally:
        loader.close()
    if done == 0:
        raise ValueError(f"bench placement: {cfg.data.train} has too few samples for 2 "
                         f"batches of {cfg.train.per_worker_batch} per rank")
    return {"batches": done, "wall_s": wall, "bytes_between_nodes": moved,
            "consumer_node": here, "reader_nodes": readers}


def bench_reader_placement(cfg: Config, *, batches: int = 50, rounds: int = 2,
                           reader_resources: Mapping[str, float] | None = None,
                           consumer_resources: Mapping[str, float] | None = None
                           ) -> dict[str, Any]:
    """Batches/s and bytes moved between nodes, readers local vs on a reader node.

    Returns ``{"local": {...}, "remote": {...}, "ratio_batches_per_s": remote / local}``;
    each side has ``batches_per_s``, ``bytes_between_nodes``, ``mb_per_s_between_nodes``,
    ``consumer_node`` and ``reader_nodes`` (node ids). Needs a Ray cluster (``ray.address``
    / RAY_ADDRESS) with a node offering ``consumer_resources`` and one offering
    ``reader_resources``; fails in one line naming the resource otherwise.
    """
    import ray

    from pipeline.ingest.placement import config_requests, require_resources
    from pipeline.shards.manifest import read_manifest
    from pipeline.storage import Storage
    from pipeline.train.ray_trainer import init_ray

    if batches < 1 or rounds < 1:
        raise ValueError(f"bench placement: batches ({batches}) and rounds ({rounds}) "
                         f"must be >= 1")
    remote = dict(reader_resources or {"reader": 0.01})
    consumer = dict(consumer_resources or cfg.ray.resources_per_worker or {"trainer": 0.01})
    shards = read_manifest(Storage(cfg.storage), cfg.data.train).shard_counts()
    connected = init_ray(cfg)
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "remote": []}
    try:
        require_resources(config_requests(remote, consumer),
                          timeout_s=cfg.ingest.placement_timeout_s)
        task = ray.remote(_consume).options(num_cpus=cfg.ray.cpus_per_worker,
                                            resources=consumer, max_retries=0)
        for _ in range(rounds):
            for name, res in (("local", {}), ("remote", remote)):
                runs[name].append(ray.get(task.remote(cfg.to_dict(), shards, res, batches)))
    finally:
        if connected:
            ray.shutdown()
    out: dict[str, Any] = {name: _combine(rs) for name, rs in runs.items()}
    out["ratio_batches_per_s"] = round(out["remote"]["batches_per_s"]
                                       / out["local"]["batches_per_s"], 3)
    return out


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    wall = sum(r["wall_s"] for r in runs)
    moved = sum(r["bytes_between_nodes"] for r in runs)
    return {"batches_per_s": round(sum(r["batches"] for r in runs) / wall, 2),
            "bytes_between_nodes": moved, "mb_per_s_between_nodes": round(moved / wall / 2**20, 2),
            "consumer_node": runs[0]["consumer_node"],
            "reader_nodes": sorted({n for r in runs for n in r["reader_nodes"]})}
