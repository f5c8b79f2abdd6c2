"""`log_dataset_input` against the real MLflow server of the session stack."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.shards.index import index_shards
from pipeline.storage import Storage
from pipeline.tracking import client_for, log_dataset_input
from tests.shards.corpuskit import write_corpus

pytestmark = pytest.mark.integration


def test_runs_on_the_same_manifest_show_the_same_dataset(stack: Any, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "laion", shards=2)
    dest = str(tmp_path / "idx" / "laion.json")
    manifest = index_shards(str(corpus.folder), storage=Storage(), dest=dest,
                            progress=False).manifest
    client = client_for(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment(f"lineage-{uuid.uuid4().hex[:8]}")
    runs = [client.create_run(exp).info.run_id for _ in range(2)]
    for run_id in runs:
        log_dataset_input(client, run_id, manifest, dest)
    seen = []
    for run_id in runs:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert len(inputs) == 1
        ds = inputs[0].dataset
        assert json.loads(ds.source) == {"uri": dest}
        assert json.loads(ds.profile)["samples"] == manifest.total_samples == 17
        assert json.loads(ds.profile)["shards"] == 2
        assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context",
                                                                "training")]
        seen.append((ds.name, ds.digest))
    assert seen[0] == seen[1] == ("laion", manifest.sha256[:16])
