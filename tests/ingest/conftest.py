"""Fixtures for ingest integration tests: shards on the stack's S3."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.ingest.shardkit import shard_bytes


@pytest.fixture
def s3_dataset(storage: Any, request: pytest.FixtureRequest) -> Callable[..., tuple[str, list]]:
    """``make(counts, **shard_kw) -> (dataset_uri, [(key, count)])`` on the stack's S3."""

    def make(counts: list[int], **kw: Any) -> tuple[str, list[tuple[str, int]]]:
        uri = f"s3://corpus/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
        shards = []
        for s, n in enumerate(counts):
            key = f"shard-{s:06d}.tar"
            storage.put_bytes(f"{uri}/{key}", shard_bytes(s, n, **kw))
            shards.append((key, n))
        return uri, shards

    return make
