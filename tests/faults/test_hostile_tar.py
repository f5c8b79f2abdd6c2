"""Hostile shards: every malformed tar is a `TarFormatError` / a corrupt sample, in bounded time.

Table: (what the attacker wrote) -> (what the reader must do) -> (what must not happen).
Each case runs under a per-test timeout, so a parser loop is a failure, not a hang.
"""

from __future__ import annotations

import ast
import io
import random
import tarfile
from pathlib import Path

import pytest

from pipeline.ingest import tario
from pipeline.ingest.source import _read_one
from pipeline.ingest.tario import TarFormatError, _pax, iter_members
from pipeline.shards.check import check_dataset
from pipeline.shards.synthetic import write_jpeg_folder
from pipeline.shards.writer import write_shards
from pipeline.storage import Storage
from tests.ingest.test_tario_stream import _Bytes  # THE in-memory ByteSource of the tario tests

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def _header(name: bytes, size_field: bytes, kind: bytes = b"0") -> bytes:
    """A 512-byte ustar header with a correct checksum and a raw (possibly hostile) size field."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[124:136] = size_field.ljust(12, b"\0")[:12]
    h[156:157] = kind
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def _pax_member(records: bytes, name: bytes = b"a.jpg", data: bytes = b"x") -> bytes:
    pad = lambda b: b + bytes(-len(b) % 512)
    return (_header(b"pax", f"{len(records):o}".encode(), b"x") + pad(records)
            + _header(name, f"{len(data):o}".encode()) + pad(data) + bytes(1024))


def _valid_tar(n: int = 4) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            for ext, data in (("jpg", b"\xff\xd8" + bytes(300)), ("cls", b"3")):
                info = tarfile.TarInfo(f"s{i:03d}-\u00e9.{ext}")  # non-ASCII: pax records
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PAX_CASES = [  # (records, what the error says)
    (b"0 path=a\n", "length 0"),                     # used to loop forever
    (b"zz path=a\n", "record length"),               # used to raise a bare ValueError
    (b"-5 path=a\n", "record length"),
    (b"3 \n", "length 3"),                           # too short to hold "N k=\n"
    (b"99999 path=a\n", "length 99999"),             # runs past the header
    (b"11 path=abX", "length 11"),                   # no closing newline
    (b"1" * 5000, "record length"),                  # no space at all
]


@pytest.mark.parametrize("records,message", PAX_CASES)
def test_bad_pax_record_is_a_format_error(records: bytes, message: str) -> None:
    with pytest.raises(TarFormatError, match=message):
        _pax(records)


def test_good_pax_records_still_parse() -> None:
    assert _pax(b"11 path=ab\n12 size=123\n") == {"path": "ab", "size": "123"}


ARCHIVE_CASES = [  # (hostile archive, what the error says)
    (_pax_member(b"0 path=a\n"), "length 0"),
    (_pax_member(b"12 size=1x3\n"), "pax size"),
    (_pax_member(b"13 size=-100\n"), "pax size"),
    (_header(b"a.jpg", b"\xff" + b"\xff" * 11), "negative member size"),      # base-256 -1
    (_header(b"a.jpg", b"0x7f\0"), "bad size field"),                          # garbage octal
    (_header(b"a.jpg", b"77777777777\0"), "more than"),                       # 8 GiB member
    (_header(b"long", b"7777777777\0", b"L"), "extended header of"),          # 1 GiB name
    (_header(b"a.jpg", b"100\0") + b"x" * 10, "unexpected end of data"),      # truncated data
    (_valid_tar()[:700], "unexpected end"),                                   # truncated header
]


@pytest.mark.parametrize("data,message", ARCHIVE_CASES)
def test_hostile_archive_raises_format_error(data: bytes, message: str) -> None:
    with pytest.raises(TarFormatError, match=message):
        list(iter_members(_Bytes(data)))


@pytest.mark.parametrize("data,message", ARCHIVE_CASES[:4])
def test_hostile_archive_counts_samples_as_corrupt(data: bytes, message: str) -> None:
    """Through the reader's source: the needed samples come back unreadable, nothing raises."""
    out = list(_read_one(_Bytes(data), "shard-000000.tar", [0, 1]))  # type: ignore[arg-type]
    assert [(s.member, s.files) for s in out] == [(0, None), (1, None)]
    assert all("unreadable tar" in s.reason and message in s.reason for s in out)


def test_fuzzed_archives_only_raise_format_errors() -> None:
    """Random byte flips, truncations and size-field garbage of a valid pax tar: each parse
    ends (the test timeout bounds it) with members or a TarFormatError, never another error."""
    base = _valid_tar()
    assert len(list(iter_members(_Bytes(base)))) == 8
    rng = random.Random(1234)
    outcomes = {"ok": 0, "format": 0}
    for _ in range(3000):
        data = bytearray(base)
        action = rng.randrange(4)
        if action == 0:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif action == 1:
            del data[rng.randrange(len(data)):]
        elif action == 2:  # garbage in a size field of some header, checksum fixed up
            at = 512 * rng.randrange(len(data) // 512)
            data[at + 124:at + 136] = bytes(rng.randrange(256) for _ in range(12))
            data[at + 148:at + 156] = b" " * 8
            data[at + 148:at + 156] = f"{sum(data[at:at + 512]):06o}\0 ".encode()
        else:  # garbage inside the first pax record area
            at = 512 + rng.randrange(64)
            data[at:at + 4] = bytes(rng.choice(b"0123456789 =\n-x") for _ in range(4))
        try:
            list(iter_members(_Bytes(bytes(data))))
            outcomes["ok"] += 1
        except TarFormatError:
            outcomes["format"] += 1
    assert outcomes["format"] > 100 and outcomes["ok"] > 0, outcomes


def test_limits_are_what_the_parser_enforces() -> None:
    assert tario.MAX_EXTENDED_HEADER == 1 << 20 and tario.MAX_MEMBER_BYTES == 1 << 28


@pytest.mark.parametrize("data,message", ARCHIVE_CASES[:6])
def test_shards_check_reports_hostile_shard(tmp_path: Path, data: bytes, message: str) -> None:
    """`shards check` parses with tario too: a hostile shard is a "tar" problem, not a hang."""
    write_jpeg_folder(str(tmp_path / "src"), 6, width=32, height=32, classes=2)
    dest = tmp_path / "ds"
    write_shards(str(tmp_path / "src"), str(dest), storage=Storage(), samples_per_shard=3,
                 workers=1, labels="folders", progress=False)
    (dest / "shard-000000.tar").write_bytes(data)
    report = check_dataset(Storage(), str(dest))
    tar = [p for p in report.problems if p.kind == "tar"]
    assert [p.shard for p in tar] == ["shard-000000.tar"] and message in tar[0].detail
    assert not [p for p in report.problems if p.shard == "shard-000001.tar"]


def test_no_stdlib_tar_parsing_of_shards_in_the_pipeline() -> None:
    """Python 3.11.7's `tarfile` has 2025 CVEs on untrusted input (CVE-2025-8194: negative
    offsets loop forever in member enumeration; CVE-2025-4517/4138/4330, CVE-2024-12718:
    extraction-filter bypasses). Shards are parsed by tario only: no pipeline module imports
    `tarfile` or webdataset's tarfile-based readers (only `base_plus_ext`, the key rule, and
    the ShardWriter that writes our own tars in shards/upload.py)."""
    root = Path(__file__).resolve().parents[2] / "pipeline"
    offenders = []
    for path in root.rglob("*.py"):
        rel = str(path.relative_to(root.parent))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "tarfile" or (alias.name.startswith("webdataset")
                                                   and rel != "pipeline/shards/upload.py"):
                        offenders.append(f"{rel}:{node.lineno} import {alias.name}")
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = {a.name for a in node.names}
                if node.module == "tarfile" or (node.module.startswith("webdataset")
                                                and names != {"base_plus_ext"}):
                    offenders.append(f"{rel}:{node.lineno} from {node.module} import {names}")
    assert offenders == []
