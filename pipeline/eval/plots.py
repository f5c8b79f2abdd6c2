"""PNG pictures for training runs: augmented view pairs, embedding projections, training curves.

matplotlib is used through `Figure` objects and the Agg canvas only (no pyplot, no global
backend switch), so these functions are safe in Ray workers and threads. Every function
writes a PNG to a local `path` and returns that path; log it with `mlflow.log_artifact`.

    view_pairs_grid(batch["view1"], batch["view2"], "views.png")          # first batch of a run
    embedding_projection(feats, labels, "embedding.png", class_names)     # end of a run
    training_curves({"loss": [(10, 5.2), (20, 4.9)], "knn_top1": [(50, 0.61)]}, "curves.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TSNE_MAX_POINTS = 1500  # t-SNE runs on a seeded subsample of at most this many points
DPI = 100


def _save(fig: Figure, path: str | os.PathLike[str]) -> str:
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no pyplot state involved
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return os.fspath(path)


def _as_hwc(images: np.ndarray | torch.Tensor, mean: Sequence[float] | None,
            std: Sequence[float] | None) -> np.ndarray:
    """(N, C, H, W) uint8, or normalized float with mean/std -> float (N, H, W, C) in [0, 1]."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # torch refuses to wrap read-only arrays silently
    x = torch.as_tensor(images).detach().cpu()
    if x.dim() != 4:
        raise ValueError(f"views: expected (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        out = x.float() / 255.0
    elif mean is not None and std is not None:
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        out = x.float() * s + m
    else:
        out = x.float()  # already in [0, 1]
    return out.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


def _pairs_figure(view1: np.ndarray, view2: np.ndarray, n: int) -> Figure:
    """A grid of `n` pairs: each row holds up to 4 pairs, view 1 left of view 2."""
    pairs_per_row = min(4, n)
    rows = math.ceil(n / pairs_per_row)
    fig = Figure(figsize=(2.0 * pairs_per_row * 1.1, 1.1 * rows + 0.8), layout="constrained")
    fig.suptitle(f"Augmented view pairs (first {n} of the batch): view 1 | view 2")
    axes = fig.subplots(rows, 2 * pairs_per_row, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, pairs_per_row)
        for j, view in enumerate((view1, view2)):
            ax = axes[r, 2 * c + j]
            img = view[i]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(img)
            ax.set_title(f"#{i} v{j + 1}", fontsize=7)
    return fig


def view_pairs_grid(view1_uint8: np.ndarray | torch.Tensor, view2_uint8: np.ndarray | torch.Tensor,
                    path: str | os.PathLike[str], n: int = 16, *,
                    mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> str:
    """Write a PNG grid of the first `n` augmented pairs of a batch.

    view1_uint8, view2_uint8: (B, C, H, W) uint8 (reader output), or normalized float
    (after `BatchAugment`) together with the `mean`/`std` used to normalize them.
    """
    v1, v2 = _as_hwc(view1_uint8, mean, std), _as_hwc(view2_uint8, mean, std)
    if v1.shape != v2.shape:
        raise ValueError(f"view2: shape {v2.shape} differs from view1 {v1.shape}")
    if n < 1:
        raise ValueError(f"n: {n} must be >= 1")
    return _save(_pairs_figure(v1, v2, min(n, v1.shape[0])), path)


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2): projection on the two leading principal components (sign-fixed)."""
    centered = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    comps = vt[:2] * np.where(vt[:2, :1] >= 0, 1.0, -1.0)  # fix each component's sign
    proj = centered @ comps.T
    if proj.shape[1] < 2:  # D == 1: pad a zero axis
        proj = np.concatenate([proj, np.zeros((len(proj), 2 - proj.shape[1]))], axis=1)
    return proj


def _tsne_2d(x: np.ndarray, seed: int) -> np.ndarray | None:
    """t-SNE (scikit-learn, PCA init, seeded) or None when scikit-learn is not installed."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                max_iter=500).fit_transform(x)


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, names: list[str], title: str) -> None:
    cmap = _colors(len(names))
    for c, name in enumerate(names):
        sel = labels == c
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap[c], label=name, alpha=0.8)
    ax.set_title(title)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")


def _colors(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def _projection_figure(feats: np.ndarray, labels: np.ndarray, names: list[str],
                       tsne_points: int, seed: int) -> Figure:
    panels: list[tuple[str, np.ndarray, np.ndarray]] = [
        (f"PCA ({len(feats)} points)", _pca_2d(feats), labels)]
    if tsne_points > 0 and len(feats) >= 5:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.permutation(len(feats))[:tsne_points])
        tsne = _tsne_2d(feats[idx], seed)
        if tsne is not None:
            panels.append((f"t-SNE ({len(idx)} points)", tsne, labels[idx]))
    fig = Figure(figsize=(5.5 * len(panels) + 1.8, 5.0), layout="constrained")
    fig.suptitle("Eval embeddings, coloured by label")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, xy, lab) in zip(axes, panels):
        _scatter(ax, xy, lab, names, title)
    handles, legend_labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="outside right center", fontsize=8, markerscale=2,
               title="label")
    return fig


def embedding_projection(feats: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                         path: str | os.PathLike[str], class_names: Sequence[str] | None = None,
                         *, tsne_points: int = TSNE_MAX_POINTS, seed: int = 0) -> str:
    """Write a PNG of 2-D projections of embeddings feats (N, D) coloured by labels (N,).

    Left panel: PCA of all points. Right panel (when scikit-learn is installed and
    tsne_points > 0): t-SNE of a seeded subsample of at most `tsne_points` points.
    """
    x = torch.as_tensor(feats).detach().cpu().double().numpy()
    y = torch.as_tensor(labels).detach().cpu().long().numpy()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feats: expected (N, D) with N >= 2, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels: expected shape ({x.shape[0]},), got {y.shape}")
    if y.min() < 0:
        raise ValueError(f"labels: must be >= 0, got {int(y.min())}")
    k = int(y.max()) + 1
    names = list(class_names) if class_names else [str(c) for c in range(k)]
    if len(names) < k:
        raise ValueError(f"class_names: {len(names)} names but labels go up to {k - 1}")
    return _save(_projection_figure(x, y, names, tsne_points, seed), path)


def _curves_figure(history: dict[str, list[tuple[int, float]]]) -> Figure:
    names = [name for name, points in history.items() if points]
    fig = Figure(figsize=(5.0 * len(names), 3.8), layout="constrained")
    fig.suptitle("Training curves")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        steps, values = zip(*sorted(history[name]))
        ax.plot(steps, values, marker="o" if len(steps) <= 20 else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    return fig


def training_curves(history: dict[str, list[tuple[int, float]]],
                    path: str | os.PathLike[str]) -> str:
    """Write a PNG with one panel per metric, e.g. {"loss": [(step, value), ...], "knn_top1": [...]}.

    Metrics with no points are left out; at least one metric must have points.
    """
    if not isinstance(history, dict):
        raise ValueError(f"history: expected a dict of metric -> [(step, value)], got "
                         f"{type(history).__name__}")
    for name, points in history.items():
        for point in points:
            if len(point) != 2:
                raise ValueError(f"history[{name!r}]: expected (step, value) pairs, got {point!r}")
    if not any(history.values()):
        raise ValueError("history: no metric has any points to plot")
    return _save(_curves_figure(history), path)


def run_history(client: Any, run_id: str,
                keys: Sequence[str] = ("loss", "knn_top1")) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of an MLflow run's metrics (missing keys give empty lists).

    For `training_curves` at the end of a run: `training_curves(run_history(client, run_id), p)`.
    """
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in keys}
