"""`train.init_from`: start a new run from a registered encoder (the nightly warm start)."""

from __future__ import annotations

import torch

def warm_start(model: torch.nn.Module, uri: str) -> None:
    """Load a logged backbone (`train.init_from`, an MLflow model URI) into both encoders.

    The registry holds the query backbone (`mlflow.pytorch.log_model`); the key encoder
    starts as its copy, as at MoCo's initialisation. The projection heads stay fresh.
    """
    import mlflow.pytorch

    src = mlflow.pytorch.load_model(uri, map_location="cpu")
    state = src.state_dict()
    target = model.backbone  # type: ignore[attr-defined]
    missing, unexpected = target.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise ValueError(f"train.init_from: {uri} does not fit model.arch "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.encoder_k.load_state_dict(model.encoder_q.state_dict())  # type: ignore[attr-defined]
