"""The registry is data, never code: a registered model whose pickle runs code is never loaded.

Against the session's real MLflow server + SeaweedFS. Two registered versions carry a logged
MLflow model whose pickle writes a marker file when unpickled:

| action                          | run has encoder.safetensors | outcome                      |
|---------------------------------|-----------------------------|------------------------------|
| warm start (train.init_from)    | yes                         | weights loaded, marker absent|
| nightly kNN scorer              | yes                         | score in [0, 1], marker absent|
| `mocopipe evaluate`             | yes                         | exit 0, marker absent        |
| all three                       | no                          | one-line refusal, marker absent|
| control: mlflow.pytorch.load_model | -                        | marker written (payload live)|
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pipeline.cli import main
from pipeline.config import MocoConfig, load_config
from pipeline.eval.registry import UnsafeModelError, load_encoder
from pipeline.model import MoCo, build_encoder
from pipeline.orchestrate.nightly import knn_scorer
from pipeline.shards.writer import write_shards
from pipeline.tracking import client_for, open_run
from pipeline.train.export import save_encoder_safetensors
from pipeline.train.warm_start import warm_start

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TINY = Path(__file__).resolve().parents[1] / "train" / "tiny.toml"


class Evil(nn.Module):
    """Unpickling this runs `exec(code)`: it writes the marker file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.lin = nn.Linear(1, 1)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def evil(stack: Any, storage: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import mlflow
    import mlflow.pytorch

    prefix = f"s3://corpus/pickle-{uuid.uuid4().hex[:8]}"
    for split, n in (("train", 128), ("test", 64)):
        write_shards(f"fashion-mnist:{split}", f"{prefix}/{split}", storage=storage,
                     max_samples=n, samples_per_shard=64, workers=1, progress=False)
    marker = str(tmp_path_factory.mktemp("pickle") / "PWNED")
    name = f"pickletest-{uuid.uuid4().hex[:8]}"
    cfg = load_config(str(TINY), [f'train.name="{name}"', f'data.train="{prefix}/train"',
                                  f'data.eval_train="{prefix}/train"',
                                  f'data.eval_test="{prefix}/test"', "eval.knn_k=5"])
    client = client_for(stack.mlflow_uri)
    mlflow.set_tracking_uri(stack.mlflow_uri)
    torch.manual_seed(7)
    backbone = build_encoder(cfg.model, in_channels=cfg.data.channels)
    models = {}
    for model, with_weights in ((f"{name}-safe", True), (f"{name}-bare", False)):
        run = open_run(cfg, run_name=model)
        if with_weights:
            with tempfile.TemporaryDirectory() as tmp:
                client.log_artifact(run.run_id, save_encoder_safetensors(
                    backbone, os.path.join(tmp, "encoder.safetensors")))
        mlflow.set_experiment(experiment_id=run.experiment_id)
        info = mlflow.pytorch.log_model(Evil(marker), name="encoder", run_id=run.run_id,
                                        registered_model_name=model,
                                        serialization_format="pickle",
                                        pip_requirements=["torch"])
        client.set_registered_model_alias(model, "champion", info.registered_model_version)
        client.set_terminated(run.run_id, "FINISHED")
        models[model] = run.run_id
    assert not os.path.exists(marker), "logging the model must not unpickle it"
    return {"cfg": cfg, "marker": marker, "backbone": backbone, "safe": f"{name}-safe",
            "bare": f"{name}-bare", "data": prefix}


def _moco(cfg: Any) -> MoCo:
    return MoCo(build_encoder(cfg.model, cfg.data.channels), MocoConfig(dim=16, queue_size=128))


def test_warm_start_reads_only_safetensors(evil: dict[str, Any]) -> None:
    model = _moco(evil["cfg"])
    warm_start(model, f"models:/{evil['safe']}@champion")
    for key, want in evil["backbone"].state_dict().items():
        assert torch.equal(model.encoder_q.state_dict()[key], want), key
        assert torch.equal(model.encoder_k.state_dict()[key], want), key
    with pytest.raises(UnsafeModelError, match="has no encoder.safetensors artifact"):
        warm_start(_moco(evil["cfg"]), f"models:/{evil['bare']}@champion")
    assert not os.path.exists(evil["marker"])


def test_nightly_scorer_reads_only_safetensors(evil: dict[str, Any]) -> None:
    score = knn_scorer(evil["cfg"])
    acc = score(f"models:/{evil['safe']}/1")
    assert 0.0 <= acc <= 1.0
    with pytest.raises(UnsafeModelError, match="never unpickles"):
        score(f"models:/{evil['bare']}/1")
    assert not os.path.exists(evil["marker"])


def test_evaluate_reads_only_safetensors(evil: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_encoder(f"models:/{evil['safe']}@champion")
    for key, want in evil["backbone"].state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], want), key
    assert main(["evaluate", f"models:/{evil['safe']}/1", "--data", evil["data"], "--no-log",
                 "--set", "eval.probe_epochs=1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", f"models:/{evil['bare']}/1", "--data", evil["data"],
                 "--no-log"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no encoder.safetensors artifact" in err
    assert not os.path.exists(evil["marker"])


def test_control_the_payload_is_live(evil: dict[str, Any]) -> None:
    """Proof the marker test can fail: MLflow's own loader does run the pickle."""
    import mlflow.pytorch

    assert not os.path.exists(evil["marker"])
    with contextlib.suppress(Exception):  # exec returns None, not a module: loading may fail
        mlflow.pytorch.load_model(f"models:/{evil['bare']}/1", map_location="cpu")
    assert Path(evil["marker"]).read_text() == "pwned"
