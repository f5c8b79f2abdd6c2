"""info_nce against a naive per-sample reference; chance level; input validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import info_nce

pytestmark = pytest.mark.unit


def _naive(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> tuple[float, float]:
    """Per-sample loop in float64 Python arithmetic: -log(exp(q.k/t) / sum(exp(all/t)))."""
    losses, hits = [], 0
    for i in range(q.shape[0]):
        qi = q[i].double().tolist()
        pos = sum(a * b for a, b in zip(qi, k[i].double().tolist())) / t
        negs = [sum(a * b for a, b in zip(qi, queue[:, j].double().tolist())) / t
                for j in range(queue.shape[1])]
        top = max([pos] + negs)
        log_z = top + math.log(sum(math.exp(v - top) for v in [pos] + negs))
        losses.append(log_z - pos)
        hits += int(all(pos >= v for v in negs))
    return sum(losses) / len(losses), hits / q.shape[0]


@pytest.mark.parametrize("n,d,k_size", [(1, 4, 1), (2, 8, 16), (7, 16, 33), (16, 32, 64)])
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_matches_naive_loop(n: int, d: int, k_size: int, t: float) -> None:
    g = torch.Generator().manual_seed(n * 1000 + d + k_size)
    q = F.normalize(torch.randn(n, d, generator=g), dim=1)
    k = F.normalize(q + 0.5 * torch.randn(n, d, generator=g), dim=1)  # correlated positives
    queue = F.normalize(torch.randn(d, k_size, generator=g), dim=0)
    loss, acc1 = info_nce(q, k, queue, t)
    ref_loss, ref_acc = _naive(q, k, queue, t)
    assert loss.shape == () and acc1.shape == ()
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-5)
    assert acc1.item() == pytest.approx(ref_acc)


def test_info_nce_gradient_reaches_queries_only_through_logits() -> None:
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(4, 8, generator=g), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(8, 10, generator=g), dim=0)
    loss, _ = info_nce(q, k, queue, 0.2)
    loss.backward()
    # d/dq of mean CE: (softmax @ [k; queue]^T - k) / (T * N), written out per sample.
    with torch.no_grad():
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.2
        p = logits.softmax(1)
        expected = (p[:, :1] * k + p[:, 1:] @ queue.T - k) / (0.2 * 4)
    torch.testing.assert_close(q.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k_size", [255, 4096])
def test_chance_loss_with_random_queue_is_log_k_plus_1(k_size: int) -> None:
    g = torch.Generator().manual_seed(k_size)
    n, d = 256, 128
    q = F.normalize(torch.randn(n, d, generator=g), dim=1)
    k = F.normalize(torch.randn(n, d, generator=g), dim=1)  # positives unrelated to queries
    queue = F.normalize(torch.randn(d, k_size, generator=g), dim=0)
    # With T = 1 and random unit vectors in 128-d, all logits are ~0 +- 0.09.
    loss, acc1 = info_nce(q, k, queue, 1.0)
    assert loss.item() == pytest.approx(math.log(k_size + 1), abs=0.02)
    assert acc1.item() < 0.05


def test_info_nce_is_float32_for_half_inputs() -> None:
    q = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    loss, acc1 = info_nce(q, q, F.normalize(torch.randn(8, 16), dim=0), 0.2)
    assert loss.dtype == torch.float32 and acc1.dtype == torch.float32


@pytest.mark.parametrize("q_shape,k_shape,queue_shape,t,match", [
    ((4, 8), (4, 7), (8, 16), 0.2, "q and k"),
    ((4, 8), (4, 8), (16, 8), 0.2, "queue must be"),
    ((8,), (8,), (8, 16), 0.2, "q and k"),
    ((4, 8), (4, 8), (8, 16), 0.0, "temperature"),
])
def test_info_nce_rejects_bad_inputs(q_shape, k_shape, queue_shape, t, match) -> None:
    with pytest.raises(ValueError, match=match):
        info_nce(torch.randn(q_shape), torch.randn(k_shape), torch.randn(queue_shape), t)
