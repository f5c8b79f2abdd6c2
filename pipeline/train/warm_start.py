"""`train.init_from`: start a new run from a registered encoder (the nightly warm start)."""

from __future__ import annotations

import torch


def warm_start(model: torch.nn.Module, uri: str, tracking_uri: str | None = None) -> None:
    """Load a backbone (`train.init_from`) into both encoders.

    `uri` is a model reference (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID, a run
    id) whose training run logged `encoder.safetensors`, or a local ``*.safetensors`` file.
    Only those tensors are read: the registry's pickled model is never loaded (a reference
    without the file is refused with `UnsafeModelError`). The key encoder starts as a copy of
    the query encoder, as at MoCo's initialisation (`reset_momentum_encoder`); the projection heads stay fresh.
    """
    from pipeline.eval.registry import load_encoder_state

    state, _ = load_encoder_state(uri, tracking_uri=tracking_uri)
    target = model.backbone  # type: ignore[attr-defined]
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same keys, other shapes
        raise ValueError(f"train.init_from: {uri} does not fit model.arch ({exc})") from exc
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise ValueError(f"train.init_from: {uri} does not fit model.arch "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.reset_momentum_encoder()  # type: ignore[attr-defined]  # no-op for SimCLR
