"""The linear probe: logistic regression on cached, frozen features (what `evaluate` reports)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.eval.features import ArrayLike, check_labelled


def linear_probe(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike,
                 test_labels: ArrayLike, *, epochs: int, lr: float, wd: float,
                 batch_size: int = 256, seed: int = 0) -> float:
    """Top-1 test accuracy of a logistic-regression head trained on cached, frozen features.

    Features are standardized with the train set's per-dimension mean/std. The head
    (D -> classes, zero-initialized) is trained with mini-batch SGD (momentum 0.9, cosine
    learning rate, L2 weight decay `wd` on the weights) for `epochs` passes, shuffled by a
    seeded generator: the same inputs give the same accuracy.
    train_feats (M, D), train_labels (M,), test_feats (N, D), test_labels (N,).
    """
    if epochs < 1:
        raise ValueError(f"epochs: {epochs} must be >= 1")
    if not lr > 0:
        raise ValueError(f"lr: {lr} must be > 0")
    if wd < 0:
        raise ValueError(f"wd: {wd} must be >= 0")
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    x_train = torch.as_tensor(train_feats).float()
    y_train = torch.as_tensor(train_labels).long()
    x_test = torch.as_tensor(test_feats).float()
    y_test = torch.as_tensor(test_labels).long()
    check_labelled("train", x_train, y_train)
    check_labelled("test", x_test, y_test)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"test_feats: dimension {x_test.shape[1]} != train dimension "
                         f"{x_train.shape[1]}")
    mean = x_train.mean(dim=0, keepdim=True)
    std = x_train.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    classes = int(max(y_train.max(), y_test.max())) + 1

    head = nn.Linear(x_train.shape[1], classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD([{"params": [head.weight], "weight_decay": wd},
                           {"params": [head.bias], "weight_decay": 0.0}], lr=lr, momentum=0.9)
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step = 0
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                for group in opt.param_groups:  # cosine decay to 0 over all steps
                    group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(head(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    with torch.no_grad():
        pred = head(x_test).argmax(dim=1)
    return int((pred == y_test).sum()) / len(y_test)
