"""Manifest JSON round trip and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.shards.manifest import (FORMAT_VERSION, Manifest, ManifestError, ShardInfo,
                                      read_manifest, shard_key, write_manifest)
from pipeline.storage import Storage

pytestmark = pytest.mark.unit


def _manifest() -> Manifest:
    shards = [ShardInfo(shard_key(i), 10 + i, 1000 * (i + 1), f"{i:064x}",
                        f"2026-01-0{i + 1}T00:00:00.000000Z") for i in range(3)]
    return Manifest(format_version=FORMAT_VERSION, dataset="d", shards=shards,
                    total_samples=33, total_bytes=6000, labelled=True, classes=["a", "b"],
                    skipped=[{"input": "x.txt", "reason": "unsupported extension .txt"}],
                    created_at="2026-01-01T00:00:00.000000Z",
                    updated_at="2026-01-03T00:00:00.000000Z")


def test_round_trip_and_sha(tmp_path: Path) -> None:
    m = _manifest()
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert back.sha256 == m.sha256 and len(m.sha256) == 64
    assert m.shard_counts() == [("shard-000000.tar", 10), ("shard-000001.tar", 11),
                                ("shard-000002.tar", 12)]
    assert m.next_shard_index() == 3
    write_manifest(Storage(), str(tmp_path / "ds"), m)
    assert read_manifest(Storage(), str(tmp_path / "ds")) == m
    m.shards[0].samples += 1
    m.total_samples += 1
    assert m.sha256 != back.sha256


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=3), "format_version 3"),
    (lambda d: d.update(format_version=2), "expected the columns"),
    (lambda d: d.update(total_samples=34), "total_samples 34"),
    (lambda d: d.update(total_bytes=1), "total_bytes 1"),
    (lambda d: d["shards"][1].update(key="shard-000000.tar"), "duplicate shard key"),
    (lambda d: d["shards"][0].update(sha256="xyz"), "is not a sha256"),
    (lambda d: d["shards"][0].update(samples="10"), "samples"),
    (lambda d: d["shards"][0].update(key="../b.tar"), "must be a .tar path"),
    (lambda d: d["shards"][0].update(key="b.zip"), "must be a .tar path"),
    (lambda d: d["shards"][0].update(etag=5), "etag"),
    (lambda d: d["shards"][0].update(formats="jpg"), "formats"),
    (lambda d: d.pop("classes"), "missing field"),
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d.update(classes=[]), "labelled dataset without classes"),
])
def test_invalid_manifests_are_rejected(edit, message: str) -> None:
    raw = json.loads(_manifest().to_json())
    edit(raw)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(json.dumps(raw))


def test_missing_and_garbled(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        read_manifest(Storage(), str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(Storage(), str(tmp_path))


def test_indexed_fields_round_trip_and_old_manifests_keep_their_bytes() -> None:
    m = _manifest()
    before = m.to_json()
    assert '"etag"' not in before and '"formats"' not in before  # defaults are left out
    m.shards[0].etag, m.shards[0].formats, m.shards[0].no_image = '"abc"', ["jpg", "png"], 2
    m.shards[1].sha256 = ""  # an index without --sha256
    m.shards[1].key = "s3://other/laion/00001.tar"
    back = Manifest.from_json(m.to_json())
    assert back == m and back.shards[0].formats == ["jpg", "png"]
    assert Manifest.from_json(before).to_json() == before


def test_dataset_names_resolve_to_manifest_and_shard_locations() -> None:
    from pipeline.shards.manifest import manifest_uri, shard_uri

    assert manifest_uri("s3://b/ds") == "s3://b/ds/manifest.json"
    assert manifest_uri("s3://b/idx/laion.json") == "s3://b/idx/laion.json"
    assert shard_uri("s3://b/ds", "shard-000001.tar") == "s3://b/ds/shard-000001.tar"
    assert shard_uri("s3://b/idx/laion.json", "x/00001.tar") == "s3://b/idx/x/00001.tar"
    assert shard_uri("s3://b/idx/laion.json", "s3://c/l/00001.tar") == "s3://c/l/00001.tar"
    assert shard_uri("/data/idx.json", "/data/laion/0.tar") == "/data/laion/0.tar"
    with pytest.raises(ManifestError, match="empty"):
        manifest_uri("")


def test_a_manifest_file_uri_is_read_like_a_dataset(tmp_path) -> None:
    m = _manifest()
    write_manifest(Storage(), str(tmp_path / "index.json"), m)
    assert read_manifest(Storage(), str(tmp_path / "index.json")) == m
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(Storage(), str(tmp_path / "other.json"))


def test_compact_form_round_trips_and_is_chosen_by_size() -> None:
    from pipeline.shards.manifest import COMPACT_MIN_SHARDS, manifest_bytes

    m = _manifest()
    m.shards[0].etag, m.shards[0].formats = '"e"', ["jpg"]
    compact = manifest_bytes(m, compact=True)
    assert json.loads(compact)["format_version"] == 2
    assert Manifest.from_json(compact.decode()) == m
    assert manifest_bytes(m) == m.to_json().encode()  # small manifests keep format 1
    assert len(m.shards) < COMPACT_MIN_SHARDS
    raw = json.loads(compact)
    raw["shards"]["samples"][1] = -3
    with pytest.raises(ManifestError, match="negative"):
        Manifest.from_json(json.dumps(raw))
    raw["shards"]["samples"][1] = "7"
    with pytest.raises(ManifestError, match=r"samples\[1\]"):
        Manifest.from_json(json.dumps(raw))
