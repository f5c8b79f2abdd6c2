"""Bring your own corpus (issue 15), end to end on real servers: an img2dataset-style corpus
(webdataset's ShardWriter: keys 000000000..., .jpg/.webp/.png + .json + .txt, failed
downloads without an image, a parquet file beside the tars, one tar with an extra .npy
member) on an object store where the cluster's credentials may only read it, indexed with
`mocopipe shards index SOURCE --manifest DEST` into another bucket, trained on by 2 workers,
killed mid-epoch after a checkpoint and resumed under the same run name.

The object store is a private SeaweedFS with two S3 identities (`-s3.config`):

* ``admin`` (test-only keys): uploads the corpus, and lists it before and after;
* ``cluster``: the keys the local stack's processes hold (this process, the `mocopipe`
  subprocesses and the Ray workers and reader actors, which take theirs from the Ray head's
  environment, never from a runtime_env). On this store they may Read/List the ``corpus``
  bucket and Read/List/Write the ``index`` bucket: nothing else (AccessDenied).

Runs reach the store through ``storage.endpoint_url`` (per run, in the config; the boto3
credential chain is unchanged); their checkpoints, metrics and encoder go to MLflow, whose
server proxies artifacts to its own store (`mlflow-artifacts:`), so training needs no
write access to the corpus store at all. What the test measures: the manifest counts only
samples with an image; every epoch trains on exactly those samples (`epoch_samples`, summed
over the ranks from the loaders' checkpointed counters, an epoch resumed midway included);
the resumed run logs every step once and ends with the weights of an uninterrupted run; and
nothing on the corpus store changed but the manifest written into ``index``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import StorageConfig
from pipeline.shards.manifest import Manifest, read_manifest
from pipeline.storage import Storage, StorageError
from tests.ingest.weed import PrivateWeed
from tests.shards.corpuskit import Corpus, write_corpus
from tests.train.fixtures import (
    REPO,
    Dataset,
    encoder_weights,
    metric_steps,
    mlflow_client,
    run_train,
    start_train,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARDS, PER_SHARD = 4, 28  # 112 samples; every 7th (16) has no image -> 96 with one
WORKERS, BATCH, EPOCHS = 2, 8, 2  # 96 / (2 x 8) = 6 steps per epoch: the whole corpus
SPE = 96 // (WORKERS * BATCH)
TOTAL = SPE * EPOCHS
CLUSTER_ACTIONS = ["Read:corpus", "List:corpus", "Read:index", "List:index", "Write:index"]


@dataclass
class Indexed:
    store: PrivateWeed
    corpus: Corpus
    src: str  # s3://corpus/<unique>/laion: the corpus (read-only for the cluster keys)
    manifest_uri: str  # s3://index/<unique>/laion.json
    before: dict[str, str]  # key -> ETag under the source prefix, right after the upload
    index_output: str


def _admin(store: PrivateWeed) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                        aws_access_key_id=store.access_key,
                        aws_secret_access_key=store.secret_key)


def _objects(store: PrivateWeed, bucket: str, prefix: str = "") -> dict[str, str]:
    """{key: ETag} of every object under `prefix`, listed with the admin keys."""
    out: dict[str, str] = {}
    for page in _admin(store).get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def _cluster_storage(store: PrivateWeed) -> Storage:
    """What every `mocopipe` process here uses: the stack's keys, the corpus store's endpoint."""
    return Storage(StorageConfig(endpoint_url=store.endpoint))


@pytest.fixture(scope="module")
def indexed(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexed]:
    """The corpus written, uploaded with the admin keys and indexed with the cluster keys."""
    state = tmp_path_factory.mktemp("corpus-store")
    store = PrivateWeed(state, buckets=("corpus", "index"), identities=[{
        "name": "cluster", "credentials": [{"accessKey": stack.access_key,
                                            "secretKey": stack.secret_key}],
        "actions": CLUSTER_ACTIONS}])
    store.start()
    try:
        corpus = write_corpus(tmp_path_factory.mktemp("laion"), shards=SHARDS,
                              per_shard=PER_SHARD, seed=15)
        root = f"byo-{uuid.uuid4().hex[:8]}"
        admin = _admin(store)
        for path in sorted(corpus.folder.iterdir()):
            admin.upload_file(str(path), "corpus", f"{root}/laion/{path.name}")
        before = _objects(store, "corpus", f"{root}/laion/")
        assert sorted(before) == sorted(f"{root}/laion/{p.name}"
                                        for p in corpus.folder.iterdir())
        src, dest = f"s3://corpus/{root}/laion", f"s3://index/{root}/laion.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "shards", "index", src, "--manifest", dest,
             "--set", f'storage.endpoint_url="{store.endpoint}"', "--workers", "2", "--quiet"],
            cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=300,
            check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield Indexed(store, corpus, src, dest, before, proc.stdout + proc.stderr)
    finally:
        store.stop()


def test_the_cluster_keys_index_the_corpus_but_cannot_change_it(indexed: Indexed) -> None:
    storage = _cluster_storage(indexed.store)
    # the cluster keys may read the corpus and write into `index`, and nothing else
    for attempt in (lambda: storage.put_bytes(f"{indexed.src}/intruder.tar", b"x"),
                    lambda: storage.put_bytes(f"{indexed.src}/00000.tar", b"x"),
                    lambda: storage.delete(f"{indexed.src}/00001.tar"),
                    lambda: storage.put_bytes("s3://corpus/elsewhere.json", b"{}")):
        with pytest.raises(StorageError, match="AccessDenied"):
            attempt()
    assert _objects(indexed.store, "corpus", indexed.src.split("/", 3)[3] + "/") \
        == indexed.before
    m: Manifest = read_manifest(storage, indexed.manifest_uri)
    corpus = indexed.corpus
    names = [f"{n:05d}.tar" for n in range(SHARDS)]
    assert [s.key for s in m.shards] == [f"{indexed.src}/{n}" for n in names]  # no parquet
    assert [s.samples for s in m.shards] == [corpus.images[n] for n in names]
    assert [s.no_image for s in m.shards] == [corpus.no_image.get(n, 0) for n in names]
    assert m.total_samples == sum(corpus.images.values()) == 96
    assert sum(corpus.no_image.values()) == SHARDS * PER_SHARD - 96 == 16
    assert all(s.etag == indexed.before[s.key.split("/", 3)[3]] for s in m.shards)
    assert {f for s in m.shards for f in s.formats} == {"jpg", "webp", "png"}


def _epoch_samples(client: Any, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "epoch_samples"))


def test_two_workers_train_resume_mid_epoch_and_count_every_sample(
        indexed: Indexed, tmp_path: Path) -> None:
    data = Dataset(train=indexed.manifest_uri, test="", manifest_sha="")
    store = indexed.store
    common = (f'storage.endpoint_url="{store.endpoint}"', 'data.eval_train=""',
              "eval.every_epochs=0", "data.image_size=24", "data.channels=3",
              "augment.mean=[0.5,0.5,0.5]", "augment.std=[0.25,0.25,0.25]",
              f"ray.num_workers={WORKERS}", f"train.per_worker_batch={BATCH}",
              f"train.epochs={EPOCHS}", "checkpoint.every_steps=4", "train.report_every=2",
              "ray.max_failures=0")  # the killed attempt ends its driver: resumed by name
    client = mlflow_client()
    ref = run_train(data, f"byo-ref-{uuid.uuid4().hex[:8]}", *common, timeout=600).summary()

    name = f"byo-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "fault-fired"
    # rank 1 dies when it reports step 10 (epoch 1, step 4 of 6), after the step-8 checkpoint
    # was saved (its async upload may not have committed: then step 4 is the newest)
    first = start_train(data, name, *common,
                        driver=("-m", "tests.train.fault_driver", "--kill", f"1:10:{marker}"))
    try:
        rc = first.wait(600)
    finally:
        first.kill()
    assert marker.exists(), f"the fault hook never fired:\n{first.text[-4000:]}"
    assert rc != 0, f"the killed attempt exited 0:\n{first.text[-4000:]}"
    second = run_train(data, name, *common, timeout=600)
    s = second.summary()
    resumed = [int(line.split()[-1]) for line in second.text.splitlines()
               if "resumed from checkpoint step" in line]
    assert resumed in ([8], [4]), second.text[-4000:]
    assert resumed[0] % SPE != 0  # mid-epoch: the loaders resume from their saved cursors
    assert s["steps"] == TOTAL and s["run_id"] != ref["run_id"]
    runs = client.search_runs([client.get_run(s["run_id"]).info.experiment_id],
                              filter_string=f"tags.`mocopipe.run_name` = '{name}'")
    assert [r.info.run_id for r in runs] == [s["run_id"]]

    logged = list(range(2, TOTAL + 1, 2))
    for run_id in (ref["run_id"], s["run_id"]):
        assert metric_steps(client, run_id, "loss") == logged  # each step once, none missing
        # every epoch trained on exactly the samples with an image, each once
        assert _epoch_samples(client, run_id) == [(SPE, 96.0), (TOTAL, 96.0)]
    assert ref["epoch_samples"] == s["epoch_samples"] == 96
    got_loss = {m.step: m.value for m in client.get_metric_history(s["run_id"], "loss")}
    ref_loss = {m.step: m.value for m in client.get_metric_history(ref["run_id"], "loss")}
    assert got_loss == ref_loss
    got = encoder_weights(client, s["run_id"], tmp_path / "got")
    want = encoder_weights(client, ref["run_id"], tmp_path / "want")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted run"

    # nothing on the corpus store changed but the manifest in `index`: checkpoints, metrics
    # and the encoder went to MLflow's artifact store
    root = indexed.src.split("/", 3)[3]
    assert _objects(store, "corpus", root + "/") == indexed.before
    assert sorted(_objects(store, "index")) == [indexed.manifest_uri.split("/", 3)[3]]
