"""End-of-run outputs on rank 0: encoder.safetensors, the view-pair grid, the registered model.

`encoder.safetensors` holds the query backbone's state_dict with its own keys (for the
ResNets exactly torchvision's, minus `fc.*`): `torchvision.models.resnet50().load_state_dict(
load_file(path), strict=False)` loads it. The registered model is the same backbone, logged
with `mlflow.pytorch.log_model` and tagged with the final kNN accuracy.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pipeline.tracking import RunRef, client_for, redact_map

log = logging.getLogger(__name__)


def save_encoder_safetensors(backbone: nn.Module, path: str) -> str:
    """Write the backbone's state_dict (CPU, contiguous, float32 params) to `path`."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in
               backbone.state_dict().items()}
    save_file(tensors, path, metadata={"format": "pt", "producer": "mocopipe"})
    return path


def view_pairs_png(view1: torch.Tensor, view2: torch.Tensor, path: str) -> str:
    """PNG grid of augmented view pairs ((B, C, H, W) uint8 reader views)."""
    from pipeline.eval.plots import view_pairs_grid

    return view_pairs_grid(view1, view2, path, n=min(16, view1.shape[0]))


def summary_plots(run: RunRef, embeddings: tuple[Any, Any] | None,
                  class_names: list[str] | None = None) -> None:
    """Log plots/curves.png (loss and knn_top1 over steps) and, when eval embeddings are
    given ((N, D) features, (N,) labels), plots/embedding.png (PCA, and t-SNE)."""
    from pipeline.eval.plots import embedding_projection, run_history, training_curves

    client = client_for(run.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mocopipe-plots-") as tmp:
        try:
            png = training_curves(run_history(client, run.run_id),
                                  os.path.join(tmp, "curves.png"))
            client.log_artifact(run.run_id, png, artifact_path="plots")
            if embeddings is not None:
                feats, labels = embeddings
                png = embedding_projection(feats, labels, os.path.join(tmp, "embedding.png"),
                                           class_names)
                client.log_artifact(run.run_id, png, artifact_path="plots")
        except Exception as exc:  # noqa: BLE001 - a picture must not fail the run
            log.warning("summary plots not written: %s", exc)


def log_encoder(run: RunRef, backbone: nn.Module, *, registered_model: str,
                example_shape: tuple[int, ...], tags: Mapping[str, str] | None = None
                ) -> tuple[str, str]:
    """Log `backbone` (CPU, eval mode) with `mlflow.pytorch.log_model` and register it.

    The signature is (-1, C, H, W) float32 -> (-1, D) float32, inferred from a forward pass
    on zeros of `example_shape` (N, C, H, W). Serialization is "pickle" (loading needs the
    `mocopipe` package); `encoder.safetensors` is the framework-neutral copy. Requirements
    are given explicitly (no slow inference in a subprocess). `tags` are set on the model
    version (e.g. `knn_top1`). Returns (registered model name, version).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    with torch.no_grad():
        x = torch.zeros(example_shape)
        signature = infer_signature(x.numpy(), backbone(x).numpy())
    mlflow.set_tracking_uri(run.tracking_uri)
    mlflow.set_experiment(experiment_id=run.experiment_id)
    info = mlflow.pytorch.log_model(
        backbone, name="encoder", registered_model_name=registered_model, run_id=run.run_id,
        serialization_format="pickle", signature=signature,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "mocopipe"])
    version = str(info.registered_model_version)
    client = client_for(run.tracking_uri)
    for key, value in redact_map(tags or {}).items():
        client.set_model_version_tag(registered_model, version, key, value)
    return registered_model, version


def export_run(run: RunRef, backbone: nn.Module, *, registered_model: str,
               knn_top1: float | None, views: tuple[torch.Tensor, torch.Tensor] | None,
               final_step: int, example_shape: tuple[int, ...],
               embeddings: tuple[Any, Any] | None = None,
               class_names: list[str] | None = None) -> tuple[str, str]:
    """Log encoder.safetensors, plots/view_pairs.png, plots/curves.png and (with eval
    embeddings) plots/embedding.png, then log + register the backbone (a CPU copy in eval
    mode; `example_shape` (N, C, H, W) gives the model signature).

    Returns (registered model name, version).
    """
    client = client_for(run.tracking_uri)
    summary_plots(run, embeddings, class_names)
    with tempfile.TemporaryDirectory(prefix="mocopipe-export-") as tmp:
        st = save_encoder_safetensors(backbone, os.path.join(tmp, "encoder.safetensors"))
        client.log_artifact(run.run_id, st)
        if views is not None:
            try:
                png = view_pairs_png(views[0], views[1], os.path.join(tmp, "view_pairs.png"))
                client.log_artifact(run.run_id, png, artifact_path="plots")
            except Exception as exc:  # noqa: BLE001 - a picture must not fail the run
                log.warning("view-pair grid not written: %s", exc)
    tags: dict[str, Any] = {"mocopipe.run_id": run.run_id, "mocopipe.step": final_step}
    if knn_top1 is not None:
        tags["knn_top1"] = f"{knn_top1:.4f}"
    backbone.eval()
    name, version = log_encoder(run, backbone, registered_model=registered_model,
                                example_shape=example_shape, tags=tags)
    client.set_tag(run.run_id, "mocopipe.registered_model", name)
    client.set_tag(run.run_id, "mocopipe.registered_version", version)
    return name, version
