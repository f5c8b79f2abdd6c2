"""jobs/compare_methods.py without a stack: the commands it runs, what a rerun skips, and
the table (the seed-noise rows of the 1%-label fine-tune included)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from jobs import compare_methods as cm

pytestmark = pytest.mark.unit


def _fake_run(calls: list[list[str]]) -> Any:
    def run(cmd: list[str], out: Path, record: dict[str, Any]) -> dict[str, Any] | None:
        if cm._key(record) in cm._done(out):
            return None
        calls.append(cmd)
        result = {**record, "command": " ".join(cmd), "wall_s": 1.0}
        if record["step"] == "train":
            result["knn_top1"] = 0.8 + record["seed"] / 100
        elif record["step"] == "finetune_1pct":
            fs = record["finetune_seed"]
            result["rows"] = [{"fraction": 0.01, "n_labels": 600,
                               "pretrained_top1": 0.80 + fs / 100,
                               "random_top1": 0.78 - fs / 100}]
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        return result
    return run


def test_finetune_seeds_fine_tune_the_chosen_model_once_per_seed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(cm, "_run", _fake_run(calls))
    out = tmp_path / "c.jsonl"
    argv = ["--methods", "simclr", "--seeds", "0,1", "--no-eval", "--finetune-seeds", "0,1,2",
            "--finetune-model-seed", "1", "--set", "simclr.temperature=0.2", "--out", str(out)]
    assert cm.main(argv) == 0
    trains = [c for c in calls if c[3] == "train"]
    tunes = [c for c in calls if c[3] == "finetune"]
    assert len(trains) == 2 and len(tunes) == 3
    assert all(c[-3:] == ["--set", "simclr.temperature=0.2", "--json"] for c in trains)
    for fs, c in enumerate(tunes):
        assert c[4] == "models:/cmp-simclr-s1-encoder/1"
        assert c[c.index("--fractions") + 1] == "0.01" and c[c.index("--seed") + 1] == str(fs)
    calls.clear()
    assert cm.main(argv) == 0 and calls == []  # a rerun skips what the record holds
    # the same trial without the override is another record, so it runs
    assert cm.main(["--methods", "simclr", "--seeds", "0", "--no-eval", "--out", str(out)]) == 0
    assert len(calls) == 1 and "simclr.temperature=0.2" not in calls[0]


def test_table_reports_mean_sd_and_margin_over_fine_tune_seeds(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setattr(cm, "_run", _fake_run([]))
    out = tmp_path / "c.jsonl"
    cm.main(["--methods", "moco_v3", "--seeds", "1", "--no-eval", "--finetune-seeds", "0,1,2",
             "--out", str(out)])
    text = cm.table(out)
    row = next(line for line in text.splitlines() if line.startswith("| moco_v3 (s1)"))
    pre, rnd = [0.80, 0.81, 0.82], [0.78, 0.77, 0.76]
    assert f"{statistics.fmean(pre):.3f} ({statistics.stdev(pre):.3f})" in row  # 0.810 (0.010)
    assert f"{statistics.fmean(rnd):.3f} ({statistics.stdev(rnd):.3f})" in row
    assert "| +0.040 (0.020) |" in row  # differences 0.02, 0.04, 0.06
    assert "s2: 0.820 / 0.760" in row
    assert "0.810 (s1)" in text  # the train run's kNN in the first table
