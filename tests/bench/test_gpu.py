"""`mocopipe bench gpu --dry-run`: the GPU check's code runs on CPU, so it cannot rot."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.cli import main

pytestmark = pytest.mark.unit


def test_bench_gpu_dry_run_prints_one_json_line_with_every_section(capsys) -> None:
    assert main(["bench", "gpu", "--dry-run"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["dry_run"] is True and r["device"] == "cpu" and r["arch"] == "resnet18"
    for key in ("synthetic_img_s", "compiled_img_s", "ddp_shuffle_bn_img_s", "ingest_img_s",
                "ingest_prefetch_img_s"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["ddp_backend"] == "gloo"
    assert 0.0 <= r["gpu_idle_frac"] <= 1.0 and 0.0 <= r["gpu_idle_frac_prefetch"] <= 1.0
    # the ratios are what they say they are (up to the rounding of the printed img/s)
    assert r["ingest_vs_synthetic"] == pytest.approx(r["ingest_img_s"] / r["synthetic_img_s"],
                                                     rel=0.05)
    assert r["compile_speedup"] == pytest.approx(r["compiled_img_s"] / r["synthetic_img_s"],
                                                 rel=0.05)


def test_bench_gpu_without_cuda_is_one_line_error(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]


def test_bench_gpu_rejects_unknown_sections(capsys) -> None:
    assert main(["bench", "gpu", "--dry-run", "--skip", "compile,warp"]) == 2
    assert "--skip" in capsys.readouterr().err
