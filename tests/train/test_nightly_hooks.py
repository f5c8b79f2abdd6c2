"""The two hooks nightly runs use: `data.train_shards` (a subset of the manifest) and
`train.init_from` (warm start both encoders from a logged backbone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import MocoConfig, ModelConfig
from pipeline.model import MoCo, build_encoder
from pipeline.train.export import save_encoder_safetensors
from pipeline.train.warm_start import warm_start
from pipeline.train.worker import select_shards

pytestmark = pytest.mark.unit

SHARDS = [("shard-000000.tar", 10), ("shard-000001.tar", 20), ("shard-000002.tar", 30)]


def test_select_shards_keeps_manifest_order_and_all_when_empty() -> None:
    assert select_shards(SHARDS, [], "s3://b/d") == SHARDS
    got = select_shards(SHARDS, ["shard-000002.tar", "shard-000000.tar"], "s3://b/d")
    assert got == [SHARDS[0], SHARDS[2]]


def test_select_shards_names_missing_keys() -> None:
    with pytest.raises(ValueError, match=r"data.train_shards: \['shard-000009.tar'\]"):
        select_shards(SHARDS, ["shard-000001.tar", "shard-000009.tar"], "s3://b/d")


def _moco(seed: int) -> MoCo:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="small_cnn", small_images=True, width=8)
    return MoCo(build_encoder(cfg, 1), MocoConfig(dim=8, queue_size=16))


def test_warm_start_loads_the_backbone_into_both_encoders(tmp_path: Path) -> None:
    source = _moco(1)
    path = save_encoder_safetensors(source.backbone, str(tmp_path / "encoder.safetensors"))
    target = _moco(2)
    before = {k: v.clone() for k, v in target.encoder_q.state_dict().items()}
    warm_start(target, path)
    for key, want in source.backbone.state_dict().items():
        assert torch.equal(target.encoder_q.state_dict()[key], want), key
        assert torch.equal(target.encoder_k.state_dict()[key], want), key
    assert any(not torch.equal(before[k], v) for k, v in source.backbone.state_dict().items())


def test_warm_start_rejects_another_architecture(tmp_path: Path) -> None:
    other = build_encoder(ModelConfig(arch="resnet18", small_images=True, width=8), 1)
    path = save_encoder_safetensors(other, str(tmp_path / "other.safetensors"))
    with pytest.raises((ValueError, RuntimeError), match="init_from|size mismatch"):
        warm_start(_moco(3), path)
