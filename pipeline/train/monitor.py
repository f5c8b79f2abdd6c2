"""Rank 0's view of a run: MLflow metric logging (async) and the kNN monitor.

`RankZeroTracking` turns the loop's per-window sums into the logged metrics (loss, acc1, lr,
momentum, global samples/s, step time, data-wait fraction, queue fill, corrupt samples,
epoch, non-finite steps), prints one progress line per log step, runs MLflow's system
metrics monitor, and skips the steps a previous attempt of the run already logged.
`KnnMonitor` caches the labelled bank/query images once and scores a backbone with
the weighted kNN (k, tau from `[eval]`) on backbone features.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pipeline.config import Config, MlflowConfig
from pipeline.tracking import (MetricLogger, RunRef, client_for, logged_steps, set_tags,
                               start_system_metrics)


class RankZeroTracking:
    """Metrics of one run from rank 0 (see the module docstring)."""

    def __init__(self, run: RunRef, cfg: MlflowConfig, keys: Sequence[str]) -> None:
        client = client_for(run.tracking_uri)
        self.client, self.run_id = client, run.run_id
        self.skip = logged_steps(client, run.run_id, list(keys))
        self.logger = MetricLogger(client, run.run_id, flush_every_s=cfg.flush_every_s,
                                   skip_through=self.skip)
        self.monitor = (start_system_metrics(run.run_id, run.tracking_uri)
                        if cfg.system_metrics else None)
        self._closed = False

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log(metrics, step)

    def log_window(self, win: Any, *, step: int, total: int, spe: int, global_batch: int,
                   lr: float, momentum: float, queue_fill: torch.Tensor | float,
                   corrupt: float, nonfinite: int) -> dict[str, float]:
        """Log the metrics of the steps in `win` (a loop `_Window`) at `step`; return them."""
        elapsed = max(time.perf_counter() - win.t0, 1e-9)
        n = max(win.n, 1)
        metrics = {
            "loss": win.loss / n, "acc1": win.acc1 / n, "lr": lr, "momentum": momentum,
            "samples_per_s": global_batch * win.n / elapsed, "step_time": elapsed / n,
            "data_wait_frac": min(win.wait / elapsed, 1.0), "queue_fill": float(queue_fill),
            "corrupt": corrupt, "epoch": step / spe, "nonfinite": float(nonfinite),
        }
        self.logger.log(metrics, step)
        print(f"[mocopipe] step {step}/{total} epoch {step / spe:.2f} loss {metrics['loss']:.4f} "
              f"acc1 {metrics['acc1']:.3f} lr {lr:.4g} {metrics['samples_per_s']:.0f} samples/s "
              f"data_wait {metrics['data_wait_frac']:.2f}", flush=True)
        return metrics

    def set_progress(self, step: int, total: int) -> None:
        """Record the final step reached as run tags (what the driver's summary reads)."""
        set_tags(self.client, self.run_id, {"mocopipe.final_step": step,
                                            "mocopipe.total_steps": total})

    def flush_through(self, step: int) -> None:
        """Block until every metric logged so far (hence all of steps <= `step`) arrived."""
        del step  # everything queued before this call is delivered, which covers `step`
        self.logger.flush()

    def close(self, timeout: float = 300.0) -> None:
        if self._closed:
            return
        self._closed = True
        self.logger.close(timeout=timeout)
        if self.monitor is not None:
            try:
                self.monitor.finish()
            except Exception:  # noqa: BLE001 - monitoring never fails a run
                pass


class KnnMonitor:
    """Weighted kNN top-1 of a backbone on the labelled eval shards (images cached once)."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self._data: tuple[Any, Any, Any, Any] | None = None
        self._last_query: tuple[torch.Tensor, Any] | None = None

    def _load(self) -> tuple[Any, Any, Any, Any]:
        from pipeline.eval.features import load_labelled
        from pipeline.storage import Storage

        if self._data is None:
            d, e = self.cfg.data, self.cfg.eval
            storage = Storage(self.cfg.storage)
            bank_x, bank_y = load_labelled(storage, d.eval_train, channels=d.channels,
                                           image_size=d.image_size, max_samples=e.max_bank)
            query_x, query_y = load_labelled(storage, d.eval_test, channels=d.channels,
                                             image_size=d.image_size, max_samples=e.max_queries)
            self._data = (bank_x, bank_y, query_x, query_y)
        return self._data

    def __call__(self, backbone: nn.Module) -> float:
        """kNN top-1 of `backbone`; its query features are kept for `last_embeddings`."""
        from pipeline.eval.features import extract_features
        from pipeline.eval.knn import knn_top1

        bank_x, bank_y, query_x, query_y = self._load()
        bank = extract_features(backbone, bank_x, self.cfg.augment, device=self.device)
        query = extract_features(backbone, query_x, self.cfg.augment, device=self.device)
        self._last_query = (query, query_y)
        return knn_top1(bank, bank_y, query, query_y, k=self.cfg.eval.knn_k,
                        t=self.cfg.eval.knn_t)

    def last_embeddings(self) -> tuple[torch.Tensor, Any] | None:
        """Backbone features (N, D) of the query (eval_test) images and their labels (N,) from
        the last scoring (None before the first): the end-of-run embedding plot reuses the
        final evaluation's features instead of extracting them again."""
        return self._last_query
