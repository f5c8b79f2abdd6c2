"""`bench plan` at a small size: every row measured in a child process, both manifest forms."""

from __future__ import annotations

import pytest

from pipeline.bench.plan import bench_plan, format_report

pytestmark = pytest.mark.unit


def test_bench_plan_rows_for_both_forms() -> None:
    rows = bench_plan(sizes=(300,), ranks=(2, 8))
    assert [(r["shards"], r["form"]) for r in rows] == [(300, "json-v1"), (300, "json-v2")]
    v1, v2 = rows
    assert v2["file_mb"] < v1["file_mb"] / 1.5  # the columnar form is much smaller
    for row in rows:
        assert row["load_s"] > 0 and 20 < row["peak_mb"] < 1024
        assert set(row["plans"]) == {"2", "8"}
        assert all(p["plan_s"] > 0 and p["worker_slices"] >= 1 and p["rank_plan_s"] > 0
                   for p in row["plans"].values())
    text = format_report(rows)
    assert "json-v2" in text and "plan 8x4 s" in text and "1-rank plan s" in text
