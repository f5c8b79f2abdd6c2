"""The checkpoint transport bench in its dry form (two local folders, no server)."""

from __future__ import annotations

import json

import pytest

from pipeline.bench.checkpoint import bench, main, synthetic_files, time_save
from pipeline.train.checkpoint import unpack
from pipeline.train.services import LocalArtifacts

pytestmark = pytest.mark.unit


def test_synthetic_files_have_the_asked_size_and_load_weights_only() -> None:
    files = synthetic_files(4)
    assert 4.0 <= sum(len(d) for d in files.values()) / 2**20 < 4.2
    assert len(unpack(files["state.pt"])["model"]) == 8


def test_time_save_commits_a_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = LocalArtifacts(str(tmp_path))
    assert time_save(repo, synthetic_files(1)) > 0
    assert (tmp_path / "checkpoints" / "step-0000001" / "COMPLETE").is_file()


def test_bench_reports_both_transports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    n = iter(range(100))
    repos = {"proxy": lambda: LocalArtifacts(str(tmp_path / f"p{next(n)}")),
             "direct": lambda: LocalArtifacts(str(tmp_path / f"d{next(n)}"))}
    out = bench(repos, mb=2, rounds=2)
    assert out["state_mb"] == pytest.approx(2.0, abs=0.1) and out["rounds"] == 2
    for name in ("proxy", "direct"):
        assert len(out[name]["seconds"]) == 2 and out[name]["mb_per_s"] > 0
    assert out["direct_speedup"] > 0


def test_dry_cli_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dry", "--rounds", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["state_mb"] == pytest.approx(8.0, abs=0.1)
