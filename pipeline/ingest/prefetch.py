"""`DevicePrefetcher`: the host -> device copy of the next batches overlaps the current step.

Batches arrive from the loader as uint8 CPU tensors in pageable memory (the Ray object store,
shared memory): `.to("cuda", non_blocking=True)` from pageable memory is a synchronous copy
on the step's critical path (measured by `mocopipe bench gpu`: ~0.84x the synthetic img/s on
an H200 with the GPU idle only 2% of the time waiting for data). The prefetcher moves that
work to a thread, `depth` batches ahead:

    thread:  batch = next(source); state = state_fn()        # loader cursor after this batch
             pin_memory() -> copy on a side CUDA stream -> record an event
    caller:  current stream waits on the event -> (batch on device, its state)

`state_fn` (e.g. `loader.state_dict`) is sampled right after each batch is pulled, so the
state handed out with a batch is the data cursor *as of that batch*, not as of the batches
already pulled ahead: a checkpoint taken after training on batch i resumes at batch i + 1.
On the CPU the same thread and queue run and the copy is a no-op (that path is what the unit
tests exercise).

`PrefetchingSource` puts it in front of the training loop (`train.worker` on CUDA, with
``ingest.device_prefetch`` batches ahead): a `BatchSource` whose `state_dict` is the loader's
state as of the last batch the loop received, so checkpoints and resume stay exact.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from pipeline.ingest.stream import put_until_closed

_DONE = object()


class DevicePrefetcher:
    """Iterate over `(batch, state)` with `keys` of each batch already on `device`.

    Args:
        batches: dicts holding CPU tensors under `keys` (other entries pass through).
        device: the training device.
        keys: batch entries to move.
        depth: batches copied ahead (>= 1).
        state_fn: called after each batch is pulled; its value is yielded with that batch.
    """

    def __init__(self, batches: Iterable[dict[str, Any]], device: torch.device, *,
                 keys: tuple[str, ...] = ("view1", "view2"), depth: int = 2,
                 state_fn: Callable[[], Any] | None = None) -> None:
        if depth < 1:
            raise ValueError(f"DevicePrefetcher: depth {depth} must be >= 1")
        if device.type == "cuda" and device.index is None:  # set_device needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        self.device, self.keys, self.state_fn = device, keys, state_fn
        self._source = iter(batches)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._thread = threading.Thread(target=self._fill, name="device-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        return put_until_closed(self._queue, item, self._stop)

    def _fill(self) -> None:
        try:
            if self._cuda:
                torch.cuda.set_device(self.device)
            for batch in self._source:
                state = self.state_fn() if self.state_fn is not None else None
                event = None
                if self._cuda:
                    with torch.cuda.stream(self._stream):
                        for k in self.keys:
                            batch[k] = batch[k].pin_memory().to(self.device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(self._stream)
                else:
                    for k in self.keys:
                        batch[k] = batch[k].to(self.device)
                if not self._put((batch, state, event)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            self._put(exc)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], Any]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            batch, state, event = item
            if event is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(event)
                for k in self.keys:  # the side stream's memory is now used on this stream
                    batch[k].record_stream(stream)
            yield batch, state

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue or on the source)."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> DevicePrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrefetchingSource:
    """The training loop's `BatchSource` over `loader`, each epoch's batches coming through a
    `DevicePrefetcher` (`depth` ahead, on `device`). `state_dict()` is the loader's state as
    of the last batch handed to the loop, not of the batches already pulled ahead; anything
    else (``metrics``, ``close``, ``placement`` ...) is the loader's."""

    def __init__(self, loader: Any, device: torch.device, *, depth: int = 2) -> None:
        self.loader, self.device, self.depth = loader, device, depth
        self.steps_per_epoch: int = loader.steps_per_epoch
        self._state: dict[str, Any] | None = None

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        return self._iterate(self.loader.epoch(epoch))  # set-up runs here, in this thread

    def _iterate(self, source: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        prefetcher = DevicePrefetcher(source, self.device, depth=self.depth,
                                      state_fn=self.loader.state_dict)
        try:
            for batch, state in prefetcher:
                self._state = state
                yield batch
        finally:  # the loop stopped early, or the epoch ended: stop the thread
            prefetcher.close()

    def state_dict(self) -> dict[str, Any]:
        if self._state is None:
            return dict(self.loader.state_dict())
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = None
        self.loader.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
