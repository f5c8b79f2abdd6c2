"""Storage on local paths, URI helpers, and the S3 errors that need no server."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest

from pipeline.config import StorageConfig
from pipeline.storage import ObjectNotFound, Storage, StorageError, is_s3, join, split_s3

pytestmark = pytest.mark.unit


def test_uri_helpers() -> None:
    assert is_s3("s3://b/p") and not is_s3("/tmp/x")
    assert join("s3://b/p", "x") == "s3://b/p/x"
    assert join("s3://b/p/", "/x/", "y.tar") == "s3://b/p/x/y.tar"
    assert join("/tmp/d", "x") == os.path.join("/tmp/d", "x")
    assert split_s3("s3://bucket/a/b.tar") == ("bucket", "a/b.tar")
    assert split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(StorageError, match="missing bucket"):
        split_s3("s3:///key")


def test_local_round_trip(tmp_path: Path) -> None:
    s = Storage()
    uri = str(tmp_path / "a" / "b" / "obj.bin")
    s.put_bytes(uri, b"0123456789")
    assert s.get_bytes(uri) == b"0123456789"
    assert s.get_bytes(uri, 2, 5) == b"234"
    assert s.get_bytes(uri, 7) == b"789"
    assert s.get_bytes(uri, 4, 4) == b""
    assert s.size(uri) == 10 and s.exists(uri)
    assert s.size(uri + "x") is None and not s.exists(uri + "x")
    body, total = s.get_stream(uri, 6)
    assert (body.read(2), body.read(), total) == (b"67", b"89", 10)
    body.close()
    body, total = s.get_stream(uri, 10)
    assert (body.read(), total) == (b"", 10)
    body.close()
    assert os.listdir(tmp_path / "a" / "b") == ["obj.bin"]  # no temp file left behind
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    s.put_file(str(tmp_path / "c" / "copy.bin"), str(src))
    assert s.list(str(tmp_path)) == sorted([uri, str(tmp_path / "c" / "copy.bin"), str(src)])
    s.delete(uri)
    s.delete(uri)  # missing is fine
    assert not s.exists(uri)
    assert s.list(str(tmp_path / "nope")) == []


def test_local_errors(tmp_path: Path) -> None:
    s = Storage()
    with pytest.raises(ObjectNotFound, match="missing.bin"):
        s.get_bytes(str(tmp_path / "missing.bin"))
    with pytest.raises(ObjectNotFound):
        s.get_stream(str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match="bad range"):
        s.get_bytes(str(tmp_path / "x"), 5, 2)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="is a file"):
        s.check_access(str(tmp_path / "file" / "dataset"))
    s.check_access(str(tmp_path / "new" / "dataset"))  # creatable: fine


@pytest.mark.parametrize("missing", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_missing_credentials_name_the_variable(monkeypatch: pytest.MonkeyPatch,
                                               missing: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.delenv(missing)
    with pytest.raises(StorageError, match=missing):
        Storage(StorageConfig(endpoint_url="http://127.0.0.1:9")).check_access("s3://b/x")


def test_connection_refused_names_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    endpoint = f"http://127.0.0.1:{port}"
    s = Storage(StorageConfig(endpoint_url=endpoint, max_retries=0, connect_timeout_s=2))
    with pytest.raises(StorageError, match=f"cannot connect to S3 endpoint {endpoint}"):
        s.check_access("s3://corpus/ds")
    with pytest.raises(StorageError, match=endpoint):
        s.get_bytes("s3://corpus/ds/manifest.json")


def test_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    s = Storage()
    assert s.endpoint == "http://127.0.0.1:1234"
    assert s.client.meta.endpoint_url == "http://127.0.0.1:1234"
    assert Storage(StorageConfig(endpoint_url="http://h:1")).endpoint == "http://h:1"


def test_pickle_drops_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    s = Storage(StorageConfig(endpoint_url="http://127.0.0.1:1", max_retries=2))
    _ = s.client
    clone = pickle.loads(pickle.dumps(s))
    assert clone.cfg == s.cfg and clone._client is None
