"""A small Vision Transformer backbone (ViT-Tiny / ViT-Small shapes) beside the ConvNets.

    (N, C, H, W) --patch conv (p x p, stride p)--> (N, h*w, D) tokens, h = H/p, w = W/p
    prepend a learned [CLS] token, add fixed 2-D sin-cos position embeddings  -> (N, 1+hw, D)
    `depth` pre-norm blocks: x + Attn(LN(x)), x + MLP(LN(x))                -> (N, 1+hw, D)
    final LayerNorm, [CLS] output                                            -> (N, D)

ViT-S/16 at 224 px: D = 384, 6 heads, depth 12, 14 x 14 = 196 patches + [CLS]. ViT-Tiny:
D = 192, 3 heads. The position embedding is fixed (as in MoCo v3) and computed for the input's
patch grid, so one model accepts any image size divisible by the patch size; parameter names
follow the common layout (patch_embed.proj, cls_token, blocks.i.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}, norm). No BatchNorm, so every MoCo BN mode leaves it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sincos_pos_embed(h: int, w: int, dim: int) -> torch.Tensor:
    """(h * w, dim) fixed 2-D sin-cos embedding: dim/2 channels for rows, dim/2 for columns."""
    if dim % 4 != 0:
        raise ValueError(f"sincos_pos_embed: dim {dim} must be divisible by 4")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))  # (D/4,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    out_y = ys.reshape(-1, 1) * omega  # (hw, D/4)
    out_x = xs.reshape(-1, 1) * omega
    emb = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)  # (hw, D)
    return emb.float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape  # (N, T, D)
        qkv = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, T, D/heads)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, hw, D)


class VisionTransformer(nn.Module):
    """(N, in_channels, H, W) -> (N, feature_dim = embed_dim), the final [CLS] token."""

    def __init__(self, *, in_channels: int = 3, patch_size: int = 16, embed_dim: int = 384,
                 depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if in_channels < 1 or patch_size < 1 or depth < 1 or heads < 1:
            raise ValueError(f"VisionTransformer: in_channels {in_channels}, patch_size "
                             f"{patch_size}, depth {depth}, heads {heads} must all be >= 1")
        if embed_dim % heads != 0 or embed_dim % 4 != 0:
            raise ValueError(f"VisionTransformer: embed_dim {embed_dim} must be divisible by "
                             f"heads {heads} and by 4")
        self.in_channels, self.patch_size = in_channels, patch_size
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.feature_dim = embed_dim
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"input: expected (N, {self.in_channels}, H, W) with H, W "
                             f"divisible by patch_size {p}, got {tuple(x.shape)}")
        tokens = self.patch_embed(x)  # (N, hw, D)
        pos = sincos_pos_embed(x.shape[2] // p, x.shape[3] // p, tokens.shape[2])
        tokens = tokens + pos.to(tokens.device, tokens.dtype)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (N, 1, D)
        h = torch.cat([cls, tokens], dim=1)  # (N, 1 + hw, D)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)[:, 0]  # (N, D)


def vit_tiny(*, in_channels: int = 3, patch_size: int = 16) -> VisionTransformer:
    """ViT-Tiny: D 192, depth 12, 3 heads."""
    return VisionTransformer(in_channels=in_channels, patch_size=patch_size, embed_dim=192,
                             depth=12, heads=3)


def vit_small(*, in_channels: int = 3, patch_size: int = 16) -> VisionTransformer:
    """ViT-Small: D 384, depth 12, 6 heads (ViT-S/16 at 224 px: 196 patches)."""
    return VisionTransformer(in_channels=in_channels, patch_size=patch_size, embed_dim=384,
                             depth=12, heads=6)
