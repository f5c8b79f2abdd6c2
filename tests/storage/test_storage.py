"""Storage on local paths, URI helpers, backend choice, local ETags and conditional writes."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import StorageConfig
from pipeline.storage import (
    ObjectNotFound,
    PreconditionFailed,
    Storage,
    StorageError,
    is_s3,
    join,
    split_s3,
)
from pipeline.storage.local import LocalBackend
from pipeline.storage.s3 import S3Backend

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
    src.write_bytes(b"y" * 10)
    with pytest.raises(PreconditionFailed, match="already exists"):
        s.put_file(str(tmp_path / "c" / "copy.bin"), str(src), if_none_match=True)
    assert s.get_bytes(str(tmp_path / "c" / "copy.bin")) == b"x" * 1000
    assert os.listdir(tmp_path / "c") == ["copy.bin"]  # no temp file left behind
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


@pytest.mark.parametrize("uri", ["gs://bucket/x", "az://container/x", "http://host/x",
                                 "file:///tmp/x", "S3://bucket/x"])
def test_unknown_scheme_is_refused_not_taken_for_a_path(uri: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Storage()
    scheme = uri.split("://")[0] + "://"
    for call in (lambda: s.put_bytes(f"{uri}/a", b"x"), lambda: s.check_access(uri),
                 lambda: s.list(uri), lambda: s.get_bytes(f"{uri}/a"), lambda: s.exists(uri)):
        with pytest.raises(StorageError, match=f"unsupported URI scheme '{scheme}'"):
            call()
    assert os.listdir(tmp_path) == []  # nothing like ./gs:/bucket was created


def test_backend_is_chosen_from_the_uri(tmp_path: Path) -> None:
    s = Storage()
    assert isinstance(s.backend("s3://b/k"), S3Backend)
    for local in (str(tmp_path / "x"), "relative/dir", "./a:b/c", "C:x"):
        assert isinstance(s.backend(local), LocalBackend)


def test_cli_shards_write_to_unknown_scheme_is_one_line_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rc = main(["shards", "write", "fashion-mnist:train", "gs://bucket/x", "--max-samples", "8",
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "unsupported URI scheme 'gs://'" in err, err
    assert os.listdir(tmp_path) == []


def test_local_etag_changes_with_every_write(tmp_path: Path) -> None:
    s = Storage()
    uri = str(tmp_path / "m.json")
    assert s.head(uri) is None
    first = s.put_bytes(uri, b"same")
    info = s.head(uri)
    assert info is not None and (info.size, info.etag, info.metadata) == (4, first, {})
    second = s.put_bytes(uri, b"same")
    assert second != first and s.head(uri).etag == second  # type: ignore[union-attr]
    assert s.head(str(tmp_path)) is None  # a directory is not an object


def test_local_reads_of_a_named_version(tmp_path: Path) -> None:
    s = Storage()
    uri = str(tmp_path / "shard.tar")
    old = s.put_bytes(uri, b"0123456789")
    assert s.get_bytes(uri, 2, 4, if_match=old) == b"23"
    body, total = s.get_stream(uri, 5, if_match=old)
    assert (body.read(), total) == (b"56789", 10)
    body.close()
    new = s.put_bytes(uri, b"abcdefghij")  # replaced while a reader was between ranges
    with pytest.raises(PreconditionFailed, match="changed"):
        s.get_stream(uri, 5, if_match=old)
    with pytest.raises(PreconditionFailed, match="changed"):
        s.get_bytes(uri, 5, if_match=old)
    assert s.get_bytes(uri, 5, if_match=new) == b"fghij"


def test_local_conditional_writes(tmp_path: Path) -> None:
    s = Storage()
    uri = str(tmp_path / "d" / "manifest.json")
    v1 = s.put_bytes(uri, b"v1", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="already exists"):
        s.put_bytes(uri, b"v2", if_none_match=True)
    assert s.get_bytes(uri) == b"v1"
    v3 = s.put_bytes(uri, b"v3", if_match=v1)
    assert s.get_bytes(uri) == b"v3" and v3 != v1
    with pytest.raises(PreconditionFailed, match="changed since version"):
        s.put_bytes(uri, b"v4", if_match=v1)  # stale version
    assert s.get_bytes(uri) == b"v3"
    s.delete(uri)
    with pytest.raises(PreconditionFailed, match="no longer exists"):
        s.put_bytes(uri, b"v5", if_match=v3)
    assert not s.exists(uri)
    with pytest.raises(ValueError, match="not both"):
        s.put_bytes(uri, b"x", if_match=v3, if_none_match=True)
    with pytest.raises(ValueError, match="if_match"):
        s.put_bytes(uri, b"x", if_match="")
    assert os.listdir(tmp_path / "d") == []  # no temp file survives a lost condition


def _cas_increments(uri: str, n: int) -> int:
    """Add 1 to the counter in `uri` n times by read-modify-write with if_match; return how
    many conditional writes lost (and were retried)."""
    s, lost = Storage(), 0
    for _ in range(n):
        while True:
            info = s.head(uri)
            assert info is not None
            value = int(s.get_bytes(uri))
            try:
                s.put_bytes(uri, str(value + 1).encode(), if_match=info.etag)
                break
            except PreconditionFailed:
                lost += 1
    return lost


def test_local_compare_and_swap_loses_no_update_across_processes(tmp_path: Path) -> None:
    """4 processes increment one counter with CAS: every increment survives."""
    import multiprocessing as mp

    uri, procs, each = str(tmp_path / "counter"), 4, 60
    Storage().put_bytes(uri, b"0", if_none_match=True)
    with mp.get_context("fork").Pool(procs) as pool:
        lost = pool.starmap(_cas_increments, [(uri, each)] * procs)
    assert int(Storage().get_bytes(uri)) == procs * each, lost


def _race_to_create(s: Storage, uri: str, n: int) -> list[int]:
    """n threads create `uri` with if_none_match at once; return the winners' ids."""
    wins: list[int] = []
    lost: list[int] = []
    barrier = threading.Barrier(n)

    def create(i: int) -> None:
        barrier.wait()
        try:
            s.put_bytes(uri, f"w{i}".encode(), if_none_match=True)
            wins.append(i)
        except PreconditionFailed:
            lost.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) + len(lost) == n
    return wins


def test_local_if_none_match_race_has_one_winner(tmp_path: Path) -> None:
    s = Storage()
    for round_ in range(5):
        uri = str(tmp_path / f"m{round_}.json")
        wins = _race_to_create(s, uri, 8)
        assert len(wins) == 1 and s.get_bytes(uri) == f"w{wins[0]}".encode()


def test_pickle_drops_the_client_and_keeps_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    s = Storage(StorageConfig(endpoint_url="http://127.0.0.1:1", max_retries=2))
    _ = s.client
    clone = pickle.loads(pickle.dumps(s))
    assert clone.cfg == s.cfg and clone._s3._client is None
    assert clone.client is not None and clone.client is not s.client
    assert clone.endpoint == "http://127.0.0.1:1"
