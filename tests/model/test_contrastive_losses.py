"""nt_xent and in_batch_ctr against naive float64 loops; chance levels; the seed example."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import in_batch_ctr, nt_xent

pytestmark = pytest.mark.unit


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float, anchors: range | None = None
                   ) -> tuple[float, float]:
    """Full batch of N pairs, 2N embeddings e = [z1; z2]; anchor a's positive is a +- N and its
    candidates every b != a. Mean over `anchors` (rows of z1 and their z2 twins)."""
    n = z1.shape[0]
    e = [r.double().tolist() for r in torch.cat([z1, z2])]
    rows = list(anchors if anchors is not None else range(n))
    losses, hits = [], 0
    for a in rows + [r + n for r in rows]:
        pos = (a + n) % (2 * n)
        logits = {b: _dot(e[a], e[b]) / t for b in range(2 * n) if b != a}
        top = max(logits.values())
        log_z = top + math.log(sum(math.exp(v - top) for v in logits.values()))
        losses.append(log_z - logits[pos])
        hits += int(logits[pos] >= top)
    return sum(losses) / len(losses), hits / len(losses)


def _naive_ctr(q: torch.Tensor, k: torch.Tensor, t: float, offset: int) -> tuple[float, float]:
    losses, hits = [], 0
    kk = [r.double().tolist() for r in k]
    for i, qi in enumerate(q.double().tolist()):
        logits = [_dot(qi, kj) / t for kj in kk]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        losses.append(2 * t * (log_z - logits[offset + i]))
        hits += int(logits[offset + i] >= top)
    return sum(losses) / len(losses), hits / len(losses)


def _pairs(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, d, generator=g), dim=1)
    z2 = F.normalize(z1 + 0.7 * torch.randn(n, d, generator=g), dim=1)  # correlated positives
    return z1, z2


@pytest.mark.parametrize("n,d", [(1, 3), (2, 8), (5, 16), (12, 32)])
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_naive_loop(n: int, d: int, t: float) -> None:
    z1, z2 = _pairs(n, d, seed=n * 100 + d)
    loss, acc1 = nt_xent(z1, z2, t)
    ref_loss, ref_acc = _naive_nt_xent(z1, z2, t)
    assert loss.shape == () and acc1.shape == ()
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-5)
    assert acc1.item() == pytest.approx(ref_acc)


@pytest.mark.parametrize("world", [2, 3])
def test_nt_xent_rank_slices_average_to_the_full_batch_loss(world: int) -> None:
    """A rank's anchors against the gathered batch: the naive loss over that rank's rows, and
    the mean over ranks equals the full-batch loss (every rank has n anchors pairs)."""
    n = 4
    z1, z2 = _pairs(world * n, 8, seed=world)
    per_rank = []
    for r in range(world):
        sl = slice(r * n, (r + 1) * n)
        loss, _ = nt_xent(z1[sl], z2[sl], 0.3, all1=z1, all2=z2, offset=r * n)
        ref, _ = _naive_nt_xent(z1, z2, 0.3, anchors=range(r * n, (r + 1) * n))
        assert loss.item() == pytest.approx(ref, rel=1e-5)
        per_rank.append(loss.item())
    full, _ = nt_xent(z1, z2, 0.3)
    assert sum(per_rank) / world == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize("n", [1, 4, 32])
def test_nt_xent_chance_level_is_ln_2n_minus_1(n: int) -> None:
    z = F.normalize(torch.ones(n, 8), dim=1)  # all embeddings equal: every logit ties
    loss, _ = nt_xent(z, z.clone(), 0.5)
    assert loss.item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)
    # Random directions in a high dimension are nearly orthogonal: close to chance as well.
    g = torch.Generator().manual_seed(0)
    r1, r2 = (F.normalize(torch.randn(n, 8192, generator=g), dim=1) for _ in range(2))
    assert nt_xent(r1, r2, 1.0)[0].item() == pytest.approx(math.log(2 * n - 1), abs=0.03)


@pytest.mark.parametrize("n,world,d", [(1, 1, 4), (3, 2, 8), (8, 4, 16)])
@pytest.mark.parametrize("t", [0.2, 1.0])
def test_in_batch_ctr_matches_naive_loop(n: int, world: int, d: int, t: float) -> None:
    g = torch.Generator().manual_seed(n + world + d)
    k = F.normalize(torch.randn(n * world, d, generator=g), dim=1)
    for r in range(world):
        q = F.normalize(k[r * n:(r + 1) * n] + 0.8 * torch.randn(n, d, generator=g), dim=1)
        loss, acc1 = in_batch_ctr(q, k, t, offset=r * n)
        ref_loss, ref_acc = _naive_ctr(q, k, t, r * n)
        assert loss.item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
        assert acc1.item() == pytest.approx(ref_acc)


def test_in_batch_ctr_chance_level_is_2tau_ln_n() -> None:
    z = F.normalize(torch.ones(6, 8), dim=1)
    assert in_batch_ctr(z, z, 0.2)[0].item() == pytest.approx(2 * 0.2 * math.log(6), rel=1e-6)


def test_losses_reject_bad_input() -> None:
    z = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, 0.0)
    with pytest.raises(ValueError, match="nt_xent"):
        nt_xent(z, torch.zeros(3, 8), 0.5)
    with pytest.raises(ValueError, match="offset"):
        nt_xent(z, z, 0.5, all1=z, all2=z, offset=1)
    with pytest.raises(ValueError, match="in_batch_ctr"):
        in_batch_ctr(z, torch.zeros(8, 4), 0.2)


def seed_example_loss(z: torch.Tensor, t: float) -> torch.Tensor:
    """The introductory example this project grew from: ONE view per image, labels
    range(N) over z @ z.T, i.e. each projection's positive is itself."""
    logits = z @ z.T / t  # (N, N), the diagonal is the "positive"
    return F.cross_entropy(logits, torch.arange(z.shape[0]))


def test_seed_example_is_solved_at_random_init_and_minimised_by_scaling() -> None:
    """The seed example's task is solved before any learning: at random init every
    projection already scores itself highest (top-1 = 1), and its minimum (0) is reached by
    scaling the untrained output, which changes no direction and so no kNN neighbour."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32))  # untrained
    x = torch.randn(16, 1, 8, 8)
    z = net(x)
    n_z = F.normalize(z, dim=1)
    assert ((n_z @ n_z.T).argmax(dim=1) == torch.arange(16)).all()  # "acc1" = 1 at init
    losses = [seed_example_loss(s * z, 1.0).item() for s in (0.05, 0.2, 1.0, 10.0)]
    assert losses[0] > losses[1] > losses[2] > losses[3]
    assert losses[0] > 2.0 and losses[3] < 1e-6  # the minimum, without learning
    # With normalised projections the loss is the uniformity term alone; its positive pair
    # contributes the constant 1 / t, so no invariance between two views is ever asked for.
    # NT-Xent with two *different* views at the same init is near chance instead.
    z2 = net(x + 0.5 * torch.randn_like(x))
    real, _ = nt_xent(n_z, F.normalize(z2, dim=1), 1.0)
    assert real.item() > 1.0 > seed_example_loss(10.0 * z, 1.0).item()
