"""The S3 backend against the real SeaweedFS of the session stack: conditional writes (does
the store honour If-Match / If-None-Match, atomically?), and the credential chain end to end
through `mocopipe shards write|check` with a shared credentials file + AWS_PROFILE only."""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.config import StorageConfig
from pipeline.shards.manifest import read_manifest
from pipeline.storage import PreconditionFailed, Storage
from tests.storage.conftest import write_profile
from tests.storage.test_storage import _race_to_create

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"s3://corpus/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def test_seaweedfs_honours_conditional_puts(storage: Storage, prefix: str) -> None:
    uri = f"{prefix}/manifest.json"
    v1 = storage.put_bytes(uri, b"v1", if_none_match=True)
    info = storage.head(uri)
    assert info is not None and (info.size, info.etag) == (2, v1) and v1
    with pytest.raises(PreconditionFailed, match="if_none_match"):
        storage.put_bytes(uri, b"v2", if_none_match=True)
    assert storage.get_bytes(uri) == b"v1"
    v3 = storage.put_bytes(uri, b"v3", if_match=v1)
    assert v3 != v1 and storage.get_bytes(uri) == b"v3"
    with pytest.raises(PreconditionFailed, match="if_match"):
        storage.put_bytes(uri, b"v4", if_match=v1)  # stale
    assert storage.get_bytes(uri) == b"v3"
    assert storage.get_bytes(uri, 1, if_match=v3) == b"3"
    body, total = storage.get_stream(uri, 1, if_match=v3)
    assert (body.read(), total) == (b"3", 2)
    body.close()
    with pytest.raises(PreconditionFailed, match="changed"):
        storage.get_stream(uri, 1, if_match=v1)  # a reader resuming an older version
    with pytest.raises(PreconditionFailed, match="changed"):
        storage.get_bytes(uri, 0, 1, if_match=v1)
    with pytest.raises(PreconditionFailed, match="changed"):
        storage.get_stream(uri, 2, if_match=v1)  # at the end: no range to read, still checked
    storage.delete(uri)
    with pytest.raises(PreconditionFailed):
        storage.put_bytes(uri, b"v5", if_match=v3)  # deleted meanwhile
    assert not storage.exists(uri)


def test_seaweedfs_conditional_puts_are_atomic(storage: Storage, prefix: str) -> None:
    """8 threads race to create; 4 processes increment one counter by compare-and-swap."""
    from tests.storage.test_storage import _cas_increments

    for round_ in range(5):
        uri = f"{prefix}/race-{round_}"
        wins = _race_to_create(storage, uri, 8)
        assert len(wins) == 1 and storage.get_bytes(uri) == f"w{wins[0]}".encode()
    counter, procs, each = f"{prefix}/counter", 4, 15
    storage.put_bytes(counter, b"0", if_none_match=True)
    with mp.get_context("spawn").Pool(procs) as pool:
        lost = pool.starmap(_cas_increments, [(counter, each)] * procs)
    assert int(storage.get_bytes(counter)) == procs * each, lost
    assert sum(lost) > 0  # the processes did collide: the store refused stale versions


def test_profile_only_credentials_write_and_read_shards(
        stack: Any, bare_aws: Path, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profile(bare_aws, "moco-test", stack.access_key, stack.secret_key)
    monkeypatch.setenv("AWS_PROFILE", "moco-test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    endpoint = ["--set", f'storage.endpoint_url="{stack.s3_endpoint}"']
    dest = f"{prefix}/fmnist"
    assert main(["shards", "write", "fashion-mnist:train", dest, "--max-samples", "128",
                 "--samples-per-shard", "64", "--quiet", *endpoint]) == 0
    assert main(["shards", "check", dest, *endpoint]) == 0  # reads every shard, sha256
    storage = Storage(StorageConfig(endpoint_url=stack.s3_endpoint))
    manifest = read_manifest(storage, dest)
    assert manifest.total_samples == 128 and len(manifest.shards) == 2
    assert storage.backend(dest).credential_source == "shared-credentials-file"
    assert storage.client.meta.region_name == "eu-central-1"


def test_no_credentials_anywhere_fails_the_cli_in_one_line(
        stack: Any, bare_aws: Path, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    rc = main(["shards", "write", "fashion-mnist:train", f"{prefix}/x", "--max-samples", "8",
               "--quiet", "--set", f'storage.endpoint_url="{stack.s3_endpoint}"'])
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - t0 < 10
    assert err.count("\n") == 1 and "no AWS credentials found" in err, err
    assert "default credential chain tried" in err and str(bare_aws / "credentials") in err


@pytest.mark.slow
def test_profile_only_driver_trains(fmnist_tiny: Any, stack: Any, bare_aws: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`mocopipe train` with credentials only in a profile file: the driver reads the
    manifest with them; the Ray workers use their node's own credentials (the head's env)."""
    from tests.train.fixtures import run_train

    write_profile(bare_aws, "moco-train", stack.access_key, stack.secret_key)
    monkeypatch.setenv("AWS_PROFILE", "moco-train")
    for key, value in stack.env.items():  # endpoints, MLflow, Ray; not the S3 keys
        if key not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, value)
    name = f"profile-{uuid.uuid4().hex[:8]}"
    tp = run_train(fmnist_tiny, name, "train.epochs=1", "eval.every_epochs=0",
                   "ray.num_workers=1")
    summary = tp.summary()
    assert summary["steps"] > 0, summary
    assert "no AWS credentials" not in tp.text
