"""Fixtures of the jobs tests: small Fashion-MNIST shard sets on the stack and tiny configs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "jobs" / "configs" / "demo.toml")


@dataclass(frozen=True)
class Datasets:
    prefix: str  # s3://corpus/jobs-<uuid>
    train: str  # 8 shards x 64 labelled samples
    test: str  # 2 shards x 64 labelled samples


@pytest.fixture(scope="session")
def jobs_data(storage: Any) -> Datasets:
    """Train/test shard sets shared by the jobs integration tests (written once)."""
    from pipeline.shards.writer import write_shards

    prefix = f"s3://corpus/jobs-{uuid.uuid4().hex[:8]}"
    write_shards("fashion-mnist:train", f"{prefix}/train", storage=storage, max_samples=512,
                 samples_per_shard=64, workers=2, progress=False)
    write_shards("fashion-mnist:test", f"{prefix}/test", storage=storage, max_samples=128,
                 samples_per_shard=64, workers=2, progress=False)
    return Datasets(prefix, f"{prefix}/train", f"{prefix}/test")


def tiny_overrides(data: Datasets, name: str, *, train: str | None = None,
                   knn: bool = False) -> list[str]:
    """`--set` items that shrink the demo config to a few CPU steps on 2 small workers."""
    items = [
        f'data.train="{train or data.train}"',
        f'train.name="{name}"', f'mlflow.registered_model="{name}-encoder"',
        "train.max_steps=4", "train.per_worker_batch=32", "train.log_every=1",
        "moco.queue_size=256", "model.width=8", "ray.num_workers=2", "ray.cpus_per_worker=0.5",
        "ingest.reader_num_cpus=0.25", "checkpoint.every_steps=100", "mlflow.system_metrics=false",
        "eval.every_epochs=0", "eval.knn_k=20",
    ]
    if knn:
        items += [f'data.eval_train="{data.train}"', f'data.eval_test="{data.test}"',
                  "eval.max_bank=256", "eval.max_queries=128"]
    else:
        items += ['data.eval_train=""', 'data.eval_test=""']
    return items
