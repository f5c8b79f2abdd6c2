"""build_method dispatch; moco_v2 unchanged bit for bit; SimCLR, MoCo v3, ViT; LARS; config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import dist
from pipeline.config import ConfigError, load_config
from pipeline.config.methods import MethodConfig, MocoV3Config, SimclrConfig
from pipeline.model import (MoCo, MoCoV3, SimCLR, build_encoder, build_method, method_momentum,
                            small_cnn, vit_small)
from pipeline.train.optim import LARS, build_optimizer

pytestmark = pytest.mark.unit

SMALL = ["model.arch='small_cnn'", "model.width=4", "model.small_images=true",
         "data.image_size=16", "data.channels=1", "augment.mean=[0.5]", "augment.std=[0.5]",
         "moco.queue_size=64", "moco.dim=16", "moco.momentum=0.9", "optim.weight_decay=1e-4",
         "train.per_worker_batch=8", "ray.num_workers=1"]
# Losses of 4 SGD steps of MoCo v2 built by build_method at commit c700136 (before the method
# switch existed), with the seeds of `_train_steps`; bit-identical there and here.
MOCO_V2_GOLDEN = [float.fromhex(h) for h in (
    "0x1.4b1d760000000p-1", "0x1.0f7b700000000p+1", "0x1.57bbb80000000p+1",
    "0x1.816fc00000000p+1")]


def _views(step: int, n: int = 8, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(50 + step)
    v1 = torch.randn(n, 1, side, side, generator=g)
    return v1, v1 + 0.3 * torch.randn(n, 1, side, side, generator=g)


def _train_steps(overrides: list[str], steps: int = 4, lr: float = 0.1, fixed: bool = False
                 ) -> list[float]:
    torch.manual_seed(0)
    cfg = load_config(None, SMALL + overrides)
    model = build_method(cfg.model, cfg.moco, in_channels=1, seed=3, method=cfg.method,
                         simclr=cfg.simclr, moco_v3=cfg.moco_v3)
    opt = build_optimizer(model, cfg.optim, lr=lr)
    losses = []
    for step in range(steps):
        loss, _ = model(*_views(0 if fixed else step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_moco_v2_default_is_todays_moco_bit_for_bit() -> None:
    default = _train_steps([])
    assert default == _train_steps(["method.name='moco_v2'"])
    assert default == pytest.approx(MOCO_V2_GOLDEN, rel=1e-6)
    cfg = load_config(None, SMALL)
    assert type(build_method(cfg.model, cfg.moco, in_channels=1, seed=0)) is MoCo


@pytest.mark.parametrize("name,cls", [("moco_v2", MoCo), ("simclr", SimCLR), ("moco_v3", MoCoV3)])
def test_every_method_has_the_trainer_surface(name: str, cls: type) -> None:
    cfg = load_config(None, SMALL + [f"method.name='{name}'", "simclr.hidden_dim=32",
                                     "moco_v3.mlp_dim=32", "moco_v3.dim=16"])
    model = build_method(cfg.model, cfg.moco, in_channels=1, seed=0, method=cfg.method,
                         simclr=cfg.simclr, moco_v3=cfg.moco_v3)
    assert type(model) is cls
    loss, stats = model(*_views(0))
    assert loss.shape == () and torch.isfinite(loss)
    assert {"acc1", "pos_sim", "queue_fill", "momentum"} <= stats.keys()
    assert 0.0 <= stats["acc1"].item() <= 1.0
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # the encoder learns
    model.set_momentum(0.5)
    assert model.momentum == (0.0 if name == "simclr" else 0.5)
    with pytest.raises(ValueError, match="set_momentum"):
        model.set_momentum(1.5)
    assert isinstance(model.backbone, nn.Module) and model.backbone.feature_dim == 16


@pytest.mark.parametrize("name,opt", [("simclr", "lars"), ("simclr", "sgd"), ("moco_v3", "adamw")])
def test_methods_lower_their_loss_on_fixed_views(name: str, opt: str) -> None:
    lr = {"adamw": 0.01, "sgd": 0.3, "lars": 5.0}[opt]
    losses = _train_steps([f"method.name='{name}'", f"optim.name='{opt}'",
                           "simclr.hidden_dim=32", "moco_v3.mlp_dim=32", "moco_v3.dim=16",
                           "moco_v3.momentum=0.9"], steps=15, lr=lr, fixed=True)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_moco_v3_key_encoder_is_an_ema_and_gets_no_gradient() -> None:
    torch.manual_seed(0)
    model = MoCoV3(small_cnn(in_channels=1, width=4), MocoV3Config(dim=8, mlp_dim=16,
                                                                   momentum=0.5))
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    q_now = [p.clone() for p in model.encoder_q.parameters()]
    loss, _ = model(*_views(0))
    loss.backward()
    for pk, k0, q0 in zip(model.encoder_k.parameters(), before_k, q_now):
        torch.testing.assert_close(pk, 0.5 * k0 + 0.5 * q0)
        assert pk.grad is None and not pk.requires_grad
    assert all(p.grad is not None for p in model.predictor.parameters())


def test_simclr_chance_loss_at_random_init_is_near_ln_2n_minus_1() -> None:
    torch.manual_seed(0)
    model = SimCLR(small_cnn(in_channels=1, width=4), SimclrConfig(dim=64, hidden_dim=64,
                                                                   temperature=0.5))
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(32, 1, 16, 16, generator=g), torch.randn(32, 1, 16, 16, generator=g)
    loss, _ = model(x1, x2)  # unrelated "views": nothing to match at init
    assert loss.item() == pytest.approx(math.log(2 * 32 - 1), rel=0.05)


def test_vit_small_16_has_vit_s_shapes_at_224() -> None:
    vit = vit_small(in_channels=3, patch_size=16)
    assert sum(p.numel() for p in vit.parameters()) == pytest.approx(21.67e6, rel=0.01)
    assert vit.patch_embed(torch.zeros(1, 3, 224, 224)).shape == (1, 196, 384)
    assert vit(torch.zeros(2, 3, 224, 224)).shape == (2, 384)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        vit(torch.zeros(1, 3, 220, 220))


@pytest.mark.parametrize("name", ["moco_v2", "simclr", "moco_v3"])
def test_vit_tiny_backbone_works_with_every_method(name: str) -> None:
    cfg = load_config(None, SMALL + ["model.arch='vit_tiny'", "model.patch_size=4",
                                     f"method.name='{name}'", "simclr.hidden_dim=32",
                                     "moco_v3.mlp_dim=32"])
    model = build_method(cfg.model, cfg.moco, in_channels=1, seed=0, method=cfg.method,
                         simclr=cfg.simclr, moco_v3=cfg.moco_v3)
    loss, _ = model(*_views(0, n=4))
    loss.backward()
    assert model.backbone.feature_dim == 192 and torch.isfinite(loss)
    assert model.backbone.patch_embed.proj.weight.grad is not None


def test_lars_step_matches_the_formula() -> None:
    p = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||p|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [p], "weight_decay": 0.1},
                {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.5, momentum=0.9, eta=0.01)
    p.grad, b.grad = torch.tensor([0.0, 1.0]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([0.3, 1.4])  # grad + 0.1 * p
    ratio = 0.01 * 5.0 / g.norm()
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, 4.0]) - 0.5 * ratio * g)
    torch.testing.assert_close(b.detach(), torch.tensor([0.0]))  # plain SGD: 1 - 0.5 * 2
    p.grad, b.grad = torch.tensor([0.0, 1.0]), torch.tensor([2.0])
    opt.step()
    torch.testing.assert_close(b.detach(), torch.tensor([-1.0 - 0.5 * 0.9 * 2.0]))


def test_build_optimizer_chooses_by_name_and_excludes_bn_bias() -> None:
    model = small_cnn(in_channels=1, width=4)
    for name, cls in (("sgd", torch.optim.SGD), ("lars", LARS), ("adamw", torch.optim.AdamW)):
        cfg = load_config(None, SMALL + [f"optim.name='{name}'", "optim.no_decay_bn_bias=true"])
        opt = build_optimizer(model, cfg.optim, lr=0.1)
        assert type(opt) is cls and opt.param_groups[1]["weight_decay"] == 0.0
    assert build_optimizer(model, load_config(None, SMALL).optim, lr=0.1).param_groups[0].keys() \
        == torch.optim.SGD(model.parameters(), lr=0.1).param_groups[0].keys()


@pytest.mark.parametrize("override,key", [
    ("method.name='byol'", "method.name"), ("optim.name='adam'", "optim.name"),
    ("simclr.temperature=0", "simclr.temperature"), ("simclr.layers=0", "simclr.layers"),
    ("moco_v3.momentum=1.0", "moco_v3.momentum"), ("moco_v3.pred_layers=-1", "moco_v3.pred_layers"),
    ("optim.lars_eta=0", "optim.lars_eta"), ("model.arch='vit_base'", "model.arch"),
])
def test_config_rejects_bad_method_values(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        load_config(None, SMALL + [override])


def test_config_vit_patch_size_must_divide_image_size_and_queue_rule_is_moco_v2_only() -> None:
    with pytest.raises(ConfigError, match="^model.patch_size"):
        load_config(None, SMALL + ["model.arch='vit_tiny'", "model.patch_size=5"])
    with pytest.raises(ConfigError, match="^moco.queue_size"):
        load_config(None, SMALL + ["moco.queue_size=60"])
    cfg = load_config(None, SMALL + ["moco.queue_size=60", "method.name='simclr'"])
    assert cfg.method.name == "simclr" and cfg.flat()["method.name"] == "simclr"


def test_method_momentum_follows_the_method() -> None:
    cfg = load_config(None, SMALL)
    assert method_momentum(cfg.moco) == (0.9, False)
    assert method_momentum(cfg.moco, method=MethodConfig("moco_v3"),
                           moco_v3=cfg.moco_v3) == (0.99, True)
    assert method_momentum(cfg.moco, method=MethodConfig("simclr")) == (0.0, False)


def test_all_gather_with_grad_is_the_identity_in_one_process() -> None:
    t = torch.randn(3, 2, requires_grad=True)
    assert dist.all_gather_with_grad(t) is t
    with pytest.raises(ValueError, match="model.arch"):
        build_encoder(load_config(None, SMALL).model.__class__(arch="x"), 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("name,cls", [("simclr_fmnist", SimCLR), ("mocov3_fmnist", MoCoV3)])
def test_shipped_method_configs_build_and_step(name: str, cls: type) -> None:
    path = Path(__file__).resolve().parents[2] / "jobs" / "configs" / f"{name}.toml"
    cfg = load_config(path)
    model = build_method(cfg.model, cfg.moco, in_channels=cfg.data.channels, seed=0,
                         method=cfg.method, simclr=cfg.simclr, moco_v3=cfg.moco_v3)
    assert type(model) is cls
    opt = build_optimizer(model, cfg.optim, lr=cfg.scaled_lr)
    loss, _ = model(*_views(0, n=4, side=28))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    base, _ = method_momentum(cfg.moco, method=cfg.method, moco_v3=cfg.moco_v3)
    assert base == (0.99 if cls is MoCoV3 else 0.0)


@pytest.mark.parametrize("name", ["moco_v2", "simclr", "moco_v3"])
def test_reset_momentum_encoder_copies_the_backbone(name: str) -> None:
    cfg = load_config(None, SMALL + [f"method.name='{name}'", "simclr.hidden_dim=8",
                                     "moco_v3.mlp_dim=8"])
    model = build_method(cfg.model, cfg.moco, in_channels=1, seed=0, method=cfg.method,
                         simclr=cfg.simclr, moco_v3=cfg.moco_v3)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)  # as a warm start loading new weights would
    online = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.reset_momentum_encoder()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in online.items())
    assert hasattr(model, "encoder_k") == (name != "simclr")
    if name != "simclr":
        for (kq, q), (kk, k) in zip(model.encoder_q.state_dict().items(),
                                    model.encoder_k.state_dict().items()):
            assert kq == kk and torch.equal(q, k)
