"""`Loader`: lives on one train worker, owns its readers, yields exactly the planned batches.

Each epoch it plans (`plan_epoch`, identical arithmetic on every rank), starts its readers
on their `ReaderPlan`s and yields ``steps_per_epoch`` batches: step ``i`` comes from reader
``i % readers``. At most ``ingest.batches_in_flight`` ``next_batch`` calls are outstanding
across the readers (backpressure: a slow trainer stalls the readers instead of growing a
queue; memory does not depend on corpus size).

State is a tiny JSON-able dict: ``{"epoch", "step", "cursors", "corrupt", "samples"}``, where
``step`` counts batches handed to the trainer (not requested), ``cursors``/``corrupt`` hold
each reader's emission position after its last handed-out batch (and corrupt samples met so
far), and ``samples`` counts the samples of this epoch handed out so far that were not
repeats (each a different planned sample: the epoch's consumption, kept across a resume).
`load_state_dict` makes the next ``epoch(e)`` resume exactly there: same batches, same
order, same pixels. A state with only ``epoch``/``step`` is accepted too (cursors and
``samples`` are then derived from the step, exact when no sample was corrupt).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.metrics import IngestMetrics
from pipeline.ingest.reader import ShardReader
from pipeline.shards.plan import EpochPlan, plan_epoch


@dataclasses.dataclass(frozen=True)
class LoaderPlan:
    """Which part of the epoch plan this loader serves: the manifest's ``(key, samples)``
    (``data.train_shards`` already applied), this rank, the world, the per-rank batch and
    the plan's seed (``train.seed``)."""

    shards: list[tuple[str, int]]
    rank: int = 0
    world_size: int = 1
    per_rank_batch: int = 32
    seed: int = 0


class Loader:
    """Batches for one rank of the dataset ``data.train``. See the module docstring.

    Sections: ``data`` (dataset URI, image size, channels), ``ingest`` (readers, in-flight
    bound), ``augment`` (per-sample crop/flip), ``storage`` (S3 client; default: the
    environment's), plus a `LoaderPlan`.

    Yielded batches: ``view1``/``view2`` torch uint8 (B, C, H, W) sharing memory with the
    reader's numpy arrays (read-only when they come from the Ray object store: move or
    convert them before any in-place op), plus the reader's metadata (``keys``,
    ``positions``, ``corrupt``, ``repeats``, ``bytes``, ``retries``) and ``step``.
    """

    def __init__(self, data: DataConfig, ingest: IngestConfig, augment: AugmentConfig,
                 plan: LoaderPlan, *, storage: StorageConfig | None = None,
                 use_ray: bool = True) -> None:
        rank, world_size, dataset_uri = plan.rank, plan.world_size, data.train
        if not 0 <= rank < world_size:
            raise ValueError(f"Loader: rank {rank} is not in [0, world_size={world_size})")
        if not dataset_uri:
            raise ValueError("data.train: empty (the dataset the loader reads)")
        storage = storage or StorageConfig()
        if not storage.endpoint_url and os.environ.get("AWS_ENDPOINT_URL"):
            storage = dataclasses.replace(storage, endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        self.shards = [(str(k), int(n)) for k, n in plan.shards]
        self.rank, self.world_size = rank, world_size
        self.per_rank_batch, self.seed = plan.per_rank_batch, plan.seed
        self.ingest = ingest
        self.use_ray = use_ray
        self.steps_per_epoch = self._plan(0).steps_per_epoch
        self._metrics = IngestMetrics()
        self._state: dict[str, Any] = {"epoch": 0, "step": 0}
        self._resume: dict[str, Any] | None = None
        kwargs = dict(storage=storage, data=data, augment=augment, ingest=ingest,
                      dataset_uri=dataset_uri, batch_size=plan.per_rank_batch)
        n = ingest.readers_per_worker
        self._readers: list[Any]
        # placement: {"rank", "node", "readers": [node per reader], "strategy"} ({} in-process)
        self.placement: dict[str, Any] = {}
        if ingest.synthetic:  # `mocopipe bench pipeline`'s bare loop: pre-built batches, no I/O
            from pipeline.ingest.synthetic import SyntheticReader

            self.use_ray = False
            self._readers = [SyntheticReader(**kwargs) for _ in range(n)]  # type: ignore[arg-type]
        elif use_ray:
            self._readers, self.placement = _start_actors(n, kwargs, rank)
        else:
            self._readers = [ShardReader(**kwargs) for _ in range(n)]  # type: ignore[arg-type]

    def _plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.shards, seed=self.seed, epoch=epoch, world_size=self.world_size,
                          per_rank_batch=self.per_rank_batch,
                          readers_per_rank=self.ingest.readers_per_worker,
                          only_rank=self.rank)  # this rank's part only

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "step", "cursors", "corrupt", "samples"}`` as of the last batch handed
        out."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the next ``epoch(state["epoch"])`` call at ``state["step"]``."""
        for key in ("epoch", "step"):
            if not isinstance(state.get(key), int) or state[key] < 0:
                raise ValueError(f"Loader.load_state_dict: {key!r} must be an int >= 0, "
                                 f"got {state.get(key)!r} in {state!r}")
        if state["step"] > self.steps_per_epoch:
            raise ValueError(f"Loader.load_state_dict: step {state['step']} is past the "
                             f"epoch's {self.steps_per_epoch} steps")
        n = self.ingest.readers_per_worker
        for key in ("cursors", "corrupt"):
            if key in state and (not isinstance(state[key], list) or len(state[key]) != n):
                raise ValueError(f"Loader.load_state_dict: {key!r} must list {n} readers "
                                 f"(ingest.readers_per_worker), got {state[key]!r}")
        if "samples" in state and (not isinstance(state["samples"], int) or state["samples"] < 0):
            raise ValueError(f"Loader.load_state_dict: 'samples' must be an int >= 0, got "
                             f"{state['samples']!r} in {state!r}")
        self._resume = dict(state)
        self._state = self.state_dict() | dict(state)

    def _start_point(self, epoch: int) -> tuple[int, list[int], list[int], int]:
        """(first step, per-reader cursor, per-reader corrupt count, samples handed out) for
        this epoch."""
        n, b = self.ingest.readers_per_worker, self.per_rank_batch
        resume, self._resume = self._resume, None
        if resume is None or resume["epoch"] != epoch:
            return 0, [0] * n, [0] * n, 0
        step = resume["step"]
        done = [len(range(i, step, n)) for i in range(n)]  # batches each reader handed out
        cursors = resume.get("cursors") or [d * b for d in done]
        samples = resume.get("samples", step * b)
        return (step, [int(c) for c in cursors],
                [int(c) for c in resume.get("corrupt") or [0] * n], int(samples))

    # ------------------------------------------------------------------ iteration

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        """Yield this rank's batches of ``epoch`` from the saved cursor (exactly
        ``steps_per_epoch`` of them when starting fresh)."""
        rank_plan = self._plan(epoch).rank(self.rank)
        step, cursors, corrupt, samples = self._start_point(epoch)
        starts = [self._call(r, "start", p, c, k)
                  for r, p, c, k in zip(self._readers, rank_plan.readers, cursors, corrupt)]
        for started in starts:
            self._result(started)  # surface a bad plan before the first batch
        self._state = {"epoch": epoch, "step": step, "cursors": cursors, "corrupt": corrupt,
                       "samples": samples}
        self._metrics.start_epoch()
        return self._iterate(epoch, step)

    def _iterate(self, epoch: int, first: int) -> Iterator[dict[str, Any]]:
        n = self.ingest.readers_per_worker
        pending: collections.deque[Any] = collections.deque()
        submitted = first
        for step in range(first, self.steps_per_epoch):
            while submitted < self.steps_per_epoch and len(pending) < self.ingest.batches_in_flight:
                pending.append(self._call(self._readers[submitted % n], "next_batch"))
                submitted += 1
            t0 = time.perf_counter()
            batch = self._result(pending.popleft())
            self._metrics.add_batch(batch, time.perf_counter() - t0)
            reader = step % n
            cursors, corrupt = list(self._state["cursors"]), list(self._state["corrupt"])
            cursors[reader], corrupt[reader] = batch.pop("cursor"), batch.pop("corrupt_total")
            samples = self._state["samples"] + len(batch["keys"]) - int(batch["repeats"])
            self._state = {"epoch": epoch, "step": step + 1, "cursors": cursors,
                           "corrupt": corrupt, "samples": samples}
            batch["view1"], batch["view2"] = _tensor(batch["view1"]), _tensor(batch["view2"])
            batch["step"] = step
            yield batch

    def _call(self, reader: Any, method: str, *args: Any) -> Any:
        """Start ``reader.method(*args)``: a Ray ref, or a deferred in-process call."""
        if self.use_ray:
            return getattr(reader, method).remote(*args)
        return lambda: getattr(reader, method)(*args)

    def _result(self, handle: Any) -> Any:
        if self.use_ray:
            import ray

            return ray.get(handle)
        call: Callable[[], Any] = handle
        return call()

    # ------------------------------------------------------------------ misc

    def metrics(self) -> dict[str, float]:
        """``samples_per_s, data_wait_s, bytes_read, retries, corrupt, repeats, samples``."""
        return self._metrics.as_dict()

    def reader_pids(self) -> list[int]:
        """Process ids of the readers (this process for in-process readers)."""
        return [int(self._result(self._call(r, "pid"))) for r in self._readers]

    def reader_streams(self) -> list[list[tuple[str, int, int]]]:
        """Per reader, its open shard streams as ``(uri, bytes fetched, object size)``."""
        return [[tuple(x) for x in self._result(self._call(r, "streams"))]  # type: ignore[misc]
                for r in self._readers]

    def close(self) -> None:
        """Stop the readers (kill the actors, or close in-process streams)."""
        readers, self._readers = self._readers, []
        if self.use_ray:
            import ray

            for r in readers:
                ray.kill(r, no_restart=True)
        else:
            for r in readers:
                r.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensor(x: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a reader's uint8 array (object-store arrays are read-only)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(x)


def _start_actors(n: int, kwargs: dict[str, Any], rank: int) -> tuple[list[Any], dict[str, Any]]:
    import ray

    from pipeline.ingest.actor import start_readers

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    # S3 credentials reach the actors through their worker environment (the node's, or the
    # job's runtime_env), never as actor arguments: those show up in Ray's state API.
    return start_readers(n, kwargs, rank=rank)
