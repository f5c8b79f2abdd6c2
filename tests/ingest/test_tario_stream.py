"""Tar member parsing and the resumable read-ahead stream (no servers)."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import numpy as np
import pytest

from pipeline.ingest.stream import ObjectChanged, ReadAheadStream, StreamError
from pipeline.ingest.tario import TarFormatError, iter_members
from pipeline.storage import ObjectNotFound, Storage, StorageError

pytestmark = pytest.mark.unit


class _Bytes:
    """A ByteSource over bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def skip(self, n: int) -> int:
        k = min(n, len(self.data) - self.pos)
        self.pos += k
        return k


def _tar(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = [
    ("a000.jpg", b"x" * 1000),
    ("a000.cls", b"3"),
    ("__meta__", b"skipped"),
    ("d" * 120 + "/long.jpg", b"y" * 513),  # needs a long name (GNU L, pax or ustar prefix)
    ("k\u00e9y.png", b""),  # non-ASCII: a pax path record in PAX format
    ("b001.jpg", np.random.default_rng(0).bytes(4096)),
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_iter_members_matches_tarfile(fmt: int) -> None:
    members = [m for m in MEMBERS if fmt != tarfile.USTAR_FORMAT or m[0].isascii()]
    data = _tar(members, fmt)
    got = list(iter_members(_Bytes(data)))
    assert got == [(n, d) for n, d in members if n != "__meta__"]
    # rejected members are skipped, not read
    got = list(iter_members(_Bytes(data), lambda name: name.endswith(".cls")))
    assert [(n, d is None) for n, d in got] == [(n, not n.endswith(".cls")) for n, _ in members
                                               if n != "__meta__"]


def test_iter_members_rejects_broken_archives() -> None:
    data = _tar(MEMBERS[:2], tarfile.GNU_FORMAT)
    with pytest.raises(TarFormatError, match="end of data"):
        list(iter_members(_Bytes(data[:700])))  # cut inside the first member's data
    garbled = bytearray(data)
    garbled[10] ^= 0xFF  # a name byte: the header checksum no longer matches
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_members(_Bytes(bytes(garbled))))


def test_stream_reads_and_skips_local_file(tmp_path: Any) -> None:
    payload = np.random.default_rng(1).bytes(300_000)
    path = tmp_path / "blob"
    path.write_bytes(payload)
    with ReadAheadStream(Storage(), str(path), start=1000, chunk_bytes=4096,
                         read_ahead_bytes=16384) as s:
        out = [s.read(10), s.read(5000)]
        assert s.skip(7000) == 7000
        out.append(s.read(-1))
        assert s.read(10) == b""
        assert s.bytes_read == len(payload) - 1000
    assert b"".join(out) == payload[1000:1000 + 5010] + payload[1000 + 12010:]


class _FlakyBody:
    def __init__(self, data: bytes, fail_after: int | None) -> None:
        self.data, self.pos, self.fail_after = data, 0, fail_after

    def read(self, n: int) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError("peer reset")
        end = self.pos + n if self.fail_after is None else min(self.pos + n, self.fail_after)
        out = self.data[self.pos:end]
        self.pos += len(out)
        return out

    def close(self) -> None:
        pass


class _FlakyStorage(Storage):
    """Bodies break after a few KB (resets, then one truncated body); records each start."""

    def __init__(self, data: bytes, failures: int) -> None:
        super().__init__()
        self.data, self.failures, self.starts = data, failures, []

    def version(self, uri: str) -> str | None:
        return "v1"  # the same object throughout

    def get_stream(self, uri: str, start: int = 0) -> tuple[Any, int]:
        self.starts.append(start)
        if len(self.starts) == 2:
            raise StorageError(f"get_object {uri}: cannot connect (server down)")
        body = _FlakyBody(self.data[start:], 5000 if len(self.starts) <= self.failures else None)
        if len(self.starts) == 3:  # a body that just ends early (truncated response)
            body = _FlakyBody(self.data[start:start + 3000], None)
        return body, len(self.data)


def test_stream_resumes_from_the_last_byte_received() -> None:
    payload = np.random.default_rng(2).bytes(40_000)
    flaky = _FlakyStorage(payload, failures=4)
    with ReadAheadStream(flaky, "s3://b/x", chunk_bytes=1024, read_ahead_bytes=4096,
                         max_retries=3, backoff_s=0.001) as s:
        assert s.read(-1) == payload
        assert s.retries == 4
        assert s.bytes_read == len(payload)
    # every resumption continues where the previous attempt stopped, never from 0
    assert flaky.starts == [0, 5000, 5000, 8000, 13000]


class _DownStorage(Storage):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def version(self, uri: str) -> str | None:
        self.calls += 1
        raise StorageError(f"head_object {uri}: cannot connect to S3 endpoint")


def test_stream_gives_up_after_max_retries_and_on_missing_objects(tmp_path: Any) -> None:
    down = _DownStorage()
    with ReadAheadStream(down, "s3://b/x", chunk_bytes=1024, max_retries=2,
                         backoff_s=0.001) as s:
        with pytest.raises(StreamError, match="s3://b/x at byte 0 after 2 retries"):
            s.read(-1)
    assert down.calls == 3 and s.retries == 2
    with ReadAheadStream(Storage(), str(tmp_path / "missing.tar"), max_retries=5) as s:
        with pytest.raises(StreamError, match="no such file"):
            s.read(10)
    assert isinstance(StreamError("x"), StorageError) and not issubclass(StreamError,
                                                                         ObjectNotFound)


class _ReplacedStorage(_FlakyStorage):
    """The connection drops after 5000 bytes, and meanwhile the object was replaced."""

    def version(self, uri: str) -> str | None:
        return "v1" if not self.starts else "v2"


def test_a_sequential_stream_resuming_on_a_replaced_object_fails_clearly() -> None:
    replaced = _ReplacedStorage(np.random.default_rng(3).bytes(40_000), failures=1)
    with ReadAheadStream(replaced, "s3://b/x", chunk_bytes=1024, max_retries=3,
                         backoff_s=0.001) as s:
        assert len(s.read(4000)) == 4000
        with pytest.raises(ObjectChanged, match="version v1 .* now v2"):
            s.read(-1)
    assert replaced.starts == [0]  # never resumed into other bytes
