"""The MoCo dictionary: a FIFO queue of K L2-normalised keys, as persistent buffers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyQueue(nn.Module):
    """`queue` (D, K) of keys (columns), write pointer `ptr` and `count` of keys ever enqueued.

    All three are persistent buffers, so they are in every `state_dict` and checkpoint. The
    queue starts as random unit vectors (as in the MoCo reference); `fill` tells how much of it
    holds real keys. `enqueue` is explicit: the caller enqueues after computing the loss, and
    passes the keys gathered from all ranks so every rank holds the same global queue.
    """

    queue: torch.Tensor
    ptr: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim: {dim} must be >= 1")
        if size < 1:
            raise ValueError(f"size: {size} must be >= 1")
        self.dim = dim
        self.size = size
        self.register_buffer("queue", F.normalize(torch.randn(dim, size), dim=0))  # (D, K)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write (n, D) keys at `ptr` (wrapping around the end), advance `ptr` by n mod K.

        n must be <= K. Keys are stored in float32; they are expected L2-normalised.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"enqueue: keys must be (n, {self.dim}); got {tuple(keys.shape)}")
        n = keys.shape[0]
        if n > self.size:
            raise ValueError(f"enqueue: {n} keys do not fit a queue of size {self.size}")
        # Column indices ptr, ptr+1, ..., ptr+n-1 (mod K), computed on the device: no sync.
        idx = (self.ptr + torch.arange(n, device=self.queue.device)) % self.size  # (n,)
        self.queue[:, idx] = keys.detach().to(self.queue.dtype).T  # (D, n)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.add_(n)

    def fill(self) -> torch.Tensor:
        """Fraction of the K slots that hold real keys (float32 scalar tensor in [0, 1])."""
        return self.count.clamp(max=self.size).float() / self.size

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"
