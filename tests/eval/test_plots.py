"""Unit tests of the run pictures: they are valid PNGs and show the data they were given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.eval import plots

pytestmark = pytest.mark.unit


def _png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(path)
    img.load()
    return img


def test_view_pairs_grid_shows_each_pair(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    v1 = rng.integers(0, 256, size=(20, 1, 28, 28), dtype=np.uint8)
    v2 = 255 - v1
    fig = plots._pairs_figure(plots._as_hwc(v1, None, None), plots._as_hwc(v2, None, None), 6)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 12  # 6 pairs, two views each
    np.testing.assert_allclose(shown[0].images[0].get_array(), v1[0, 0] / 255.0)
    np.testing.assert_allclose(shown[1].images[0].get_array(), v2[0, 0] / 255.0)
    assert fig.get_suptitle().startswith("Augmented view pairs")

    out = plots.view_pairs_grid(v1, v2, tmp_path / "sub" / "views.png", n=4)
    img = np.asarray(_png(Path(out)).convert("L"))
    assert img.std() > 10  # not a blank canvas


def test_view_pairs_grid_denormalizes_float_views(tmp_path: Path) -> None:
    views = torch.full((2, 3, 8, 8), 0.0)  # normalized value 0 == the mean
    hwc = plots._as_hwc(views, mean=[0.2, 0.4, 0.6], std=[0.1, 0.1, 0.1])
    np.testing.assert_allclose(hwc[0, 0, 0], [0.2, 0.4, 0.6], rtol=1e-6)
    plots.view_pairs_grid(views, views, tmp_path / "v.png", n=2, mean=[0.2, 0.4, 0.6],
                          std=[0.1, 0.1, 0.1])
    assert _png(tmp_path / "v.png").size[0] > 100


def test_view_pairs_grid_rejects_mismatched_views(tmp_path: Path) -> None:
    a = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="view2"):
        plots.view_pairs_grid(a, a[:3], tmp_path / "x.png")
    with pytest.raises(ValueError, match="N, C, H, W"):
        plots.view_pairs_grid(a[0], a[0], tmp_path / "x.png")


def test_pca_recovers_the_dominant_direction() -> None:
    rng = np.random.default_rng(1)
    t = rng.normal(size=200)
    x = np.outer(t, [3.0, 0.0, 4.0]) + 0.01 * rng.normal(size=(200, 3))
    proj = plots._pca_2d(x)
    assert abs(np.corrcoef(proj[:, 0], t)[0, 1]) > 0.999
    assert proj[:, 0].var() > 100 * proj[:, 1].var()


def test_embedding_projection_pca_and_tsne_panels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 40)
    feats = rng.normal(size=(3, 16))[labels] * 4 + rng.normal(size=(120, 16))
    fig = plots._projection_figure(feats, labels, ["a", "b", "c"], tsne_points=40, seed=0)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["PCA (120 points)", "t-SNE (40 points)"]
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        assert sum(len(c.get_offsets()) for c in ax.collections) == (120 if "PCA" in
                                                                     ax.get_title() else 40)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]
    out = plots.embedding_projection(torch.from_numpy(feats), labels, tmp_path / "e.png",
                                     class_names=["a", "b", "c"], tsne_points=0)
    assert _png(Path(out)).size[0] > 300


def test_embedding_projection_rejects_bad_input(tmp_path: Path) -> None:
    feats = np.zeros((10, 4))
    with pytest.raises(ValueError, match="labels"):
        plots.embedding_projection(feats, np.zeros(9, dtype=int), tmp_path / "e.png")
    with pytest.raises(ValueError, match="class_names"):
        plots.embedding_projection(feats, np.arange(10) % 3, tmp_path / "e.png", ["a", "b"])


def test_training_curves_one_panel_per_metric(tmp_path: Path) -> None:
    history = {"loss": [(20, 4.0), (10, 5.0), (30, 3.5)], "knn_top1": [(30, 0.6)], "lr": []}
    fig = plots._curves_figure(history)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "knn_top1"]
    xs, ys = fig.axes[0].lines[0].get_data()
    assert list(xs) == [10, 20, 30] and list(ys) == [5.0, 4.0, 3.5]  # sorted by step
    assert fig.axes[0].get_xlabel() == "step"
    out = plots.training_curves(history, tmp_path / "curves.png")
    assert _png(Path(out)).size[0] >= 500


def test_training_curves_rejects_empty_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no metric"):
        plots.training_curves({"loss": []}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="step, value"):
        plots.training_curves({"loss": [(1, 2.0, 3)]}, tmp_path / "c.png")


def test_run_history_reads_metric_histories() -> None:
    from types import SimpleNamespace

    class _Client:
        def get_metric_history(self, run_id: str, key: str) -> list:
            assert run_id == "r1"
            if key == "loss":
                return [SimpleNamespace(step=10, value=5.0), SimpleNamespace(step=20, value=4.0)]
            return []

    assert plots.run_history(_Client(), "r1") == {"loss": [(10, 5.0), (20, 4.0)], "knn_top1": []}
