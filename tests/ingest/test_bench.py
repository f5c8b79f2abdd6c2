"""`mocopipe bench ingest` end to end on a tiny local dataset (figures are not asserted)."""

from __future__ import annotations

import json
import multiprocessing
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.shards.synthetic import write_jpeg_folder
from pipeline.shards.writer import write_shards
from pipeline.storage import Storage

pytestmark = pytest.mark.unit


def test_reencode_gives_the_same_pictures_in_each_format() -> None:
    import io

    import numpy as np
    from PIL import Image

    from pipeline.bench.ingest import reencode

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    for fmt, pil in (("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")):
        (data,) = reencode([buf.getvalue()], fmt)
        with Image.open(io.BytesIO(data)) as back:
            assert back.format == pil and back.size == (30, 20), fmt
            if fmt == "png":  # lossless: the very pixels
                assert np.array_equal(np.asarray(back), np.asarray(im))


def test_bench_ingest_json_reports_both_ratios(tmp_path: Any, capsys: Any) -> None:
    write_jpeg_folder(str(tmp_path / "jpegs"), 6, width=64, height=48)
    dest = str(tmp_path / "ds")
    manifest = write_shards(str(tmp_path / "jpegs"), dest, storage=Storage(),
                            samples_per_shard=3, progress=False, workers=1)
    rc = main(["bench", "ingest", dest, "--json", "--samples", "5", "--size", "32",
               "--rounds", "1", "--net-rounds", "1", "--load", "2", "--ranges", "3"])
    assert rc == 0
    assert multiprocessing.active_children() == []  # the load processes were stopped
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 5 and report["shards"] == 2
    assert report["load"] == 2 and report["ranges"] == 3
    assert report["sequential_stream_vs_raw_get"] == pytest.approx(
        report["sequential_stream_mb_s"] / report["raw_get_mb_s"])
    assert report["network_mb"] * 2**20 == pytest.approx(manifest.total_bytes)
    for key in ("cpu_vs_reference", "stream_vs_raw_get", "ours_samples_per_core_s",
                "reference_samples_per_core_s", "raw_get_mb_s", "stream_mb_s"):
        assert report[key] > 0, key
    assert report["cpu_vs_reference"] == pytest.approx(
        report["ours_samples_per_core_s"] / report["reference_samples_per_core_s"])
    fmts = report["per_format"]
    assert list(fmts) == ["jpg", "webp", "png"]  # the formats of an img2dataset corpus
    assert fmts["jpg"]["vs_jpg"] == pytest.approx(1.0)
    for fmt, row in fmts.items():
        assert row["samples_per_core_s"] > 0 and row["mean_kb"] > 0, fmt
        assert row["vs_jpg"] == pytest.approx(
            row["samples_per_core_s"] / fmts["jpg"]["samples_per_core_s"])
    assert fmts["png"]["mean_kb"] > fmts["jpg"]["mean_kb"]  # lossless: bigger, same pictures
    with pytest.raises(ValueError, match="samples=0"):
        main(["bench", "ingest", dest, "--samples", "0"])
    with pytest.raises(ValueError, match="ranges=0"):
        main(["bench", "ingest", dest, "--ranges", "0"])
