"""MoCo module: momentum update, no gradient to the key encoder, shuffle, queue, stats."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import dist
from pipeline.config import MocoConfig
from pipeline.model import MoCo, info_nce, momentum_update, resnet18, small_cnn

pytestmark = pytest.mark.unit


def _moco(**overrides: object) -> MoCo:
    torch.manual_seed(0)
    cfg = MocoConfig(dim=16, queue_size=32, momentum=0.9, temperature=0.2, **overrides)
    return MoCo(small_cnn(in_channels=1, width=4), cfg, seed=3)


def _views(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randn(n, 1, 16, 16, generator=g)


def test_momentum_update_math() -> None:
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    momentum_update(online, target, 0.75)
    for name, p in target.named_parameters():
        expected = 0.75 * before[name] + 0.25 * dict(online.named_parameters())[name]
        torch.testing.assert_close(p, expected)
    momentum_update(online, target, 0.0)  # m = 0: copy
    torch.testing.assert_close(target.weight, online.weight, rtol=0, atol=0)
    kept = target.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    momentum_update(online, target, 1.0)  # m = 1: frozen
    torch.testing.assert_close(target.weight, kept, rtol=0, atol=0)


def test_momentum_update_rejects_mismatch() -> None:
    with pytest.raises(ValueError, match="m = 1.5"):
        momentum_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)
    with pytest.raises(ValueError, match="shape"):
        momentum_update(nn.Linear(2, 2), nn.Linear(3, 2), 0.9)
    with pytest.raises(ValueError, match="names"):
        momentum_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.9)


def test_forward_updates_key_encoder_by_ema_of_query_weights() -> None:
    moco = _moco()
    opt = torch.optim.SGD(moco.parameters(), lr=0.5)
    v1, v2 = _views()
    loss, _ = moco(v1, v2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    k_before = {n: p.clone() for n, p in moco.encoder_k.named_parameters()}
    q_now = dict(moco.encoder_q.named_parameters())
    assert any(not torch.equal(k_before[n], q_now[n]) for n in q_now)  # SGD moved the query
    moco.set_momentum(0.6)
    moco(v1, v2)  # EMA happens first in forward
    for name, p in moco.encoder_k.named_parameters():
        torch.testing.assert_close(p, 0.6 * k_before[name] + 0.4 * q_now[name].detach())


def test_key_encoder_gets_no_gradient_and_query_does() -> None:
    moco = _moco()
    loss, _ = moco(*_views())
    loss.backward()
    for p in list(moco.encoder_k.parameters()) + list(moco.head_k.parameters()):
        assert not p.requires_grad and p.grad is None
    grads = [p.grad for p in list(moco.encoder_q.parameters()) + list(moco.head_q.parameters())]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_shuffle_unshuffle_returns_every_key_to_its_sample() -> None:
    x = torch.arange(10, dtype=torch.float32).view(10, 1) * torch.ones(10, 3)
    gen = torch.Generator().manual_seed(5)
    x_shuf, idx_unshuffle = dist.shuffle_batch(x, gen)
    assert not torch.equal(x_shuf, x)  # really permuted
    assert sorted(x_shuf[:, 0].tolist()) == list(range(10))
    y = x_shuf * 2 + 1  # a per-sample "encoder"
    torch.testing.assert_close(dist.unshuffle_batch(y, idx_unshuffle), x * 2 + 1, rtol=0, atol=0)


def test_forward_returns_loss_and_stats_and_enqueues_once_per_step() -> None:
    moco = _moco()
    v1, v2 = _views(8)
    loss, stats = moco(v1, v2)
    assert loss.shape == () and loss.requires_grad
    assert {"acc1", "queue_fill", "pos_sim", "momentum"} <= set(stats)
    assert float(stats["queue_fill"]) == 0.0  # negatives of step 1 were all random
    assert 0.0 <= float(stats["acc1"]) <= 1.0
    assert int(moco.queue.ptr) == 8 and int(moco.queue.count) == 8 and int(moco.step) == 1
    # The enqueued keys are the (normalised) keys of view2, in sample order.
    with torch.no_grad():
        k2 = F.normalize(moco.head_k(moco.encoder_k(v2)), dim=1)
    torch.testing.assert_close(moco.queue.queue[:, :8].T, k2, rtol=1e-5, atol=1e-5)
    _, stats = moco(v1, v2)
    assert float(stats["queue_fill"]) == 0.25


def test_symmetric_enqueues_each_key_batch_once_after_both_losses() -> None:
    moco = _moco(symmetric=True)
    v1, v2 = _views(8)
    queue_before = moco.queue.queue.clone()
    loss, stats = moco(v1, v2)
    assert int(moco.queue.count) == 16 and int(moco.queue.ptr) == 16
    with torch.no_grad():
        k1 = F.normalize(moco.head_k(moco.encoder_k(v1)), dim=1)
        k2 = F.normalize(moco.head_k(moco.encoder_k(v2)), dim=1)
        q1 = F.normalize(moco.head_q(moco.encoder_q(v1)), dim=1)
        q2 = F.normalize(moco.head_q(moco.encoder_q(v2)), dim=1)
    torch.testing.assert_close(moco.queue.queue[:, :16].T, torch.cat([k2, k1]),
                               rtol=1e-5, atol=1e-5)
    # Both directions used the queue as it was before this step (no self-negatives).
    l12, _ = info_nce(q1, k2, queue_before, 0.2)
    l21, _ = info_nce(q2, k1, queue_before, 0.2)
    assert loss.item() == pytest.approx(0.5 * (l12 + l21).item(), rel=1e-5)


def test_moco_state_dict_holds_queue_ptr_and_resumes_identically() -> None:
    a = _moco()
    for s in range(3):
        a(*_views(8, seed=s))
    sd = a.state_dict()
    assert {"queue.queue", "queue.ptr", "queue.count", "step"} <= set(sd)
    b = _moco()
    b.load_state_dict(sd)
    la, _ = a(*_views(8, seed=9))
    lb, _ = b(*_views(8, seed=9))
    assert la.item() == lb.item()
    torch.testing.assert_close(a.queue.queue, b.queue.queue, rtol=0, atol=0)


@pytest.mark.parametrize("bn", ["shuffle", "split", "sync", "none"])
def test_every_bn_mode_trains_in_one_process(bn: str) -> None:
    moco = _moco(bn=bn, bn_splits=2)
    opt = torch.optim.SGD(moco.parameters(), lr=0.1)
    for s in range(2):
        loss, _ = moco(*_views(8, seed=s))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item())


def test_backbone_is_the_query_encoder_with_plain_keys() -> None:
    enc = resnet18(in_channels=1, width=8, small_images=True)
    keys = list(enc.state_dict())
    moco = MoCo(enc, MocoConfig(dim=8, queue_size=16, bn="split", bn_splits=2))
    assert moco.backbone is moco.encoder_q
    assert list(moco.backbone.state_dict()) == keys
    assert moco.backbone(torch.randn(2, 1, 16, 16)).shape == (2, 64)


def test_constructor_and_forward_validation() -> None:
    with pytest.raises(ValueError, match="feature_dim"):
        MoCo(nn.Conv2d(1, 2, 3), MocoConfig())
    moco = _moco()
    with pytest.raises(ValueError, match="equal shape"):
        moco(torch.randn(4, 1, 16, 16), torch.randn(4, 1, 12, 12))
    with pytest.raises(ValueError, match="set_momentum"):
        moco.set_momentum(1.1)
