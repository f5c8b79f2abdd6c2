"""Encoders: torchvision key/shape lists, parameter counts, forward shapes, SplitBatchNorm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.model import (SplitBatchNorm2d, build_encoder, convert_split_bn, resnet18,
                            resnet50, small_cnn)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
# Published torchvision parameter counts (with the 1000-class fc).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}
FACTORIES = {"resnet18": resnet18, "resnet50": resnet50}


def _expected(name: str) -> list[tuple[str, list[int]]]:
    return [(k, list(s)) for k, s in json.loads((DATA / f"{name}_keys.json").read_text())]


def _layout(model: nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_state_dict_equals_torchvision_with_fc(name: str) -> None:
    model = FACTORIES[name](num_classes=1000)
    assert _layout(model) == _expected(name)  # same keys, order and shapes: strict=True loads
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_default_encoder_is_torchvision_minus_fc(name: str) -> None:
    model = FACTORIES[name]()
    expected = _expected(name)
    assert _layout(model) == [e for e in expected if not e[0].startswith("fc.")]
    missing = {k for k, _ in expected} - set(model.state_dict())
    assert missing == {"fc.weight", "fc.bias"}  # strict=False load misses only the classifier
    assert model.feature_dim == {"resnet18": 512, "resnet50": 2048}[name]


def test_small_image_variant_changes_only_the_stem_shape() -> None:
    big, small = resnet18(), resnet18(small_images=True, in_channels=1)
    assert list(big.state_dict()) == list(small.state_dict())
    assert small.conv1.weight.shape == (64, 1, 3, 3)
    assert isinstance(small.maxpool, nn.Identity)


@pytest.mark.parametrize("factory,dim", [(resnet18, 8 * 16), (resnet50, 32 * 16)])
def test_forward_shapes_28px_gray_small_variant(factory, dim: int) -> None:
    model = factory(in_channels=1, width=16, small_images=True).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, dim) and model.feature_dim == dim


@pytest.mark.parametrize("factory,dim", [(resnet18, 512), (resnet50, 2048)])
def test_forward_shapes_224px_rgb_torchvision_layout(factory, dim: int) -> None:
    model = factory().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, dim)


def test_fc_gives_logits_and_forward_features_gives_features() -> None:
    model = resnet18(num_classes=10, width=8, small_images=True).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_small_cnn_shapes_and_batchnorm() -> None:
    model = small_cnn(in_channels=3, width=8)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 32) and model.feature_dim == 32
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_small_cnn_pool_grid_keeps_the_layout_of_the_last_map() -> None:
    torch.manual_seed(0)
    glob, grid = small_cnn(width=4), small_cnn(width=4, pool_grid=2)
    grid.load_state_dict(glob.state_dict())  # the grid adds no parameters: same keys, same weights
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        fg, f2 = glob.eval()(x), grid.eval()(x)  # (3, 16), (3, 64)
    assert grid.feature_dim == 64 and f2.shape == (3, 64)
    # the 2x2 cells (channel-major) average back to the global pool
    assert torch.allclose(f2.view(3, 16, 4).mean(2), fg, atol=1e-6)
    # flipping the image moves content between the left and right cells
    with torch.no_grad():
        f2_flip = grid(x.flip(-1))
    assert not torch.allclose(f2_flip, f2, atol=1e-3)
    with pytest.raises(ValueError, match="pool_grid"):
        small_cnn(pool_grid=0)


@pytest.mark.parametrize("arch,small,width,dim", [
    ("small_cnn", False, 8, 32), ("resnet18", True, 8, 64), ("resnet50", True, 4, 128)])
def test_build_encoder_from_config(arch: str, small: bool, width: int, dim: int) -> None:
    enc = build_encoder(ModelConfig(arch=arch, small_images=small, width=width), in_channels=1)
    assert enc.feature_dim == dim
    assert enc(torch.randn(2, 1, 28, 28)).shape == (2, dim)


def test_encoders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        resnet18(in_channels=0)
    with pytest.raises(ValueError, match="width"):
        small_cnn(width=0)
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\)"):
        resnet18()(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="in_channels"):
        build_encoder(ModelConfig(arch="small_cnn"), in_channels=0)


def test_split_batchnorm_equals_per_chunk_batchnorm() -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 5, 4, 4) * 3 + 1
    bn = nn.BatchNorm2d(5)
    nn.init.uniform_(bn.weight)
    nn.init.uniform_(bn.bias)
    split = convert_split_bn(bn, 3)
    assert isinstance(split, SplitBatchNorm2d)
    chunks = [nn.BatchNorm2d(5) for _ in range(3)]
    for c in chunks:
        c.load_state_dict(bn.state_dict())
    out = split(x)
    expected = torch.cat([c(x[4 * i:4 * i + 4]) for i, c in enumerate(chunks)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for stat in ("running_mean", "running_var"):
        mean_of_chunks = torch.stack([getattr(c, stat) for c in chunks]).mean(0)
        torch.testing.assert_close(getattr(split, stat), mean_of_chunks)
    assert int(split.num_batches_tracked) == 1
    cl = split(x.contiguous(memory_format=torch.channels_last))  # channels_last input works
    torch.testing.assert_close(cl, out, rtol=1e-5, atol=1e-5)
    split.eval()  # eval: ordinary BN with the running statistics
    ref = nn.BatchNorm2d(5).eval()
    ref.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), ref(x))


def test_split_batchnorm_gradients_match_per_chunk_batchnorm() -> None:
    torch.manual_seed(1)
    x = torch.randn(8, 3, 2, 2)
    split = SplitBatchNorm2d(3, 2)
    plain = nn.BatchNorm2d(3)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (split(x1) ** 3).sum().backward()
    (torch.cat([plain(x2[:4]), plain(x2[4:])]) ** 3).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(split.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-5)


def test_convert_split_bn_keeps_keys_and_rejects_indivisible_batch() -> None:
    enc = small_cnn(width=4)
    keys = list(enc.state_dict())
    convert_split_bn(enc, 4)
    assert list(enc.state_dict()) == keys
    with pytest.raises(ValueError, match="not divisible"):
        enc(torch.randn(6, 1, 28, 28))
