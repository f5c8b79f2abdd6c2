"""Lineage: the run's dataset as an MLflow dataset input."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from mlflow import MlflowClient


# ----------------------------------------------------------------------------- lineage


def log_dataset_input(client: MlflowClient, run_id: str, manifest: Any, uri: str, *,
                      context: str = "training") -> None:
    """Log the run's dataset as an MLflow dataset input (the run page's "Datasets" panel).

    `manifest` is a `pipeline.shards.manifest.Manifest`, `uri` the name it was read under (a
    dataset folder or a manifest .json). Source = the manifest file's URI, digest = the
    manifest's sha256 (first 16 hex digits: MLflow's digest field is short), profile = the
    sample / shard / byte counts, so two runs on the same data show the same dataset.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from pipeline.shards.manifest import manifest_uri

    source = manifest_uri(uri)
    profile = {"samples": manifest.total_samples, "shards": len(manifest.shards),
               "bytes": manifest.total_bytes, "labelled": manifest.labelled,
               "manifest_sha256": manifest.sha256}
    dataset = Dataset(name=manifest.dataset or source, digest=manifest.sha256[:16],
                      source_type="s3" if source.startswith("s3://") else "local",
                      source=json.dumps({"uri": source}), profile=json.dumps(profile))
    client.log_inputs(run_id, datasets=[DatasetInput(
        dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)])])
