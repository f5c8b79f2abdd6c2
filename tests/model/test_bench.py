"""`mocopipe bench train` plumbing (tiny sizes; the numbers themselves are not asserted)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.config import MocoConfig, ModelConfig
from pipeline.bench.train import bench_train, format_report

pytestmark = pytest.mark.unit

TINY = ["--set", "model.arch=small_cnn", "--set", "model.width=4", "--set", "data.image_size=16",
        "--set", "data.channels=1", "--set", "augment.mean=[0.5]", "--set", "augment.std=[0.5]",
        "--set", "moco.queue_size=64", "--set", "moco.bn=split", "--set", "moco.bn_splits=2",
        "--set", "train.per_worker_batch=8"]


def test_bench_train_reports_both_sides_and_their_ratio() -> None:
    r = bench_train(ModelConfig(arch="small_cnn", width=4), MocoConfig(dim=8, queue_size=32),
                    image_size=16, channels=1, batch=4, steps=1, warmup=0, rounds=1)
    assert r["moco_img_s"] > 0 and r["supervised_img_s"] > 0
    assert r["ratio"] == pytest.approx(r["moco_img_s"] / r["supervised_img_s"], rel=1e-2)
    assert "ratio MoCo / supervised" in format_report(r)


def test_cli_bench_train_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "train", *TINY, "--steps", "1", "--warmup", "0", "--rounds", "1",
               "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["arch"] == "small_cnn" and out["batch"] == 8
    assert out["moco"]["bn"] == "split" and len(out["moco_rounds_img_s"]) == 1


def test_cli_bench_train_rejects_a_queue_smaller_than_the_batch(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "train", *TINY, "--batch", "128", "--steps", "1"])
    assert rc == 2 and "moco.queue_size" in capsys.readouterr().err
