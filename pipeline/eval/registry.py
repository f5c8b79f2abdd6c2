"""Encoders from the MLflow registry, as data only: weights from `encoder.safetensors`.

    loaded = load_encoder("models:/demo-encoder/1")      # or @alias, runs:/..., a bare run id
    state, run_id = load_encoder_state("models:/demo-encoder@champion")

A model reference is resolved to the training run that produced it; the run's params are
the resolved config tree (`cfg.flat()`), so `build_encoder(cfg.model, cfg.data.channels)`
gives the architecture, and the run artifact `encoder.safetensors` the weights.

The registry is never unpickled: `mlflow.pytorch.load_model` runs whatever code a pickle
names, so anyone able to register a version or move an alias on the MLflow server could run
code with the cluster's credentials. A reference whose run has no `encoder.safetensors` is
refused (`UnsafeModelError`); the logged MLflow model stays for users who want it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, get_type_hints

import torch
from torch import nn

from pipeline.config import (
    Config,
    ConfigError,
    MlflowConfig,
    _apply_override,
    from_dict,
    load_config,
)
from pipeline.model import build_encoder
from pipeline.tracking import TrackingError, client_for, resolve_tracking_uri

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.safetensors"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class UnsafeModelError(TrackingError):
    """The reference has no `encoder.safetensors`; loading it would mean unpickling."""


@dataclass
class LoadedEncoder:
    """A trained backbone with the config of its training run and where it came from."""

    backbone: nn.Module
    cfg: Config
    run_id: str  # the training run
    experiment_id: str
    label: str  # how the table names it, e.g. "demo-encoder v3"
    model_name: str | None = None
    model_version: str | None = None


def resolve_source(client: Any, ref: str) -> tuple[str, str | None, str | None]:
    """MODEL_URI | RUN_ID -> (run_id, registered model name or None, version or None).

    Accepts models:/NAME/VERSION, models:/NAME/latest, models:/NAME@ALIAS, models:/m-<id>
    (an MLflow 3 logged model), runs:/RUN_ID[/path] and a bare 32-hex run id.
    """
    from mlflow.exceptions import MlflowException

    try:
        return _resolve(client, ref)
    except MlflowException as exc:
        raise TrackingError(f"{ref}: {exc.message}") from exc


def _resolve(client: Any, ref: str) -> tuple[str, str | None, str | None]:
    if ref.startswith("models:/"):
        rest = ref[len("models:/"):].strip("/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
            return mv.run_id, mv.name, str(mv.version)
        if "/" in rest:
            name, version = rest.rsplit("/", 1)
            if version == "latest":
                found = client.search_model_versions(f"name = '{name}'",
                                                     order_by=["version_number DESC"])
                if not found:
                    raise TrackingError(f"{ref}: registered model {name!r} has no versions")
                version = str(found[0].version)
            mv = client.get_model_version(name, version)
            return mv.run_id, mv.name, str(mv.version)
        if rest.startswith("m-"):
            return client.get_logged_model(rest).source_run_id, None, None
        raise TrackingError(f"{ref}: expected models:/NAME/VERSION, models:/NAME@ALIAS or "
                            "models:/m-<logged model id>")
    if ref.startswith("runs:/"):
        run_id = ref[len("runs:/"):].split("/", 1)[0]
    else:
        run_id = ref
    if not _RUN_ID.match(run_id):
        raise TrackingError(f"{ref!r}: not a model URI (models:/NAME/VERSION, models:/NAME@ALIAS, "
                            "runs:/RUN_ID) nor a 32-character MLflow run id")
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if versions:  # the run registered an encoder: evaluate (and tag) that version
        mv = max(versions, key=lambda v: int(v.version))
        return run_id, mv.name, str(mv.version)
    return run_id, None, None


def config_from_params(params: dict[str, str], overrides: list[str] | None = None) -> Config:
    """Rebuild the training config from run params (`cfg.flat()`: strings raw, others JSON)."""
    hints = get_type_hints(Config)
    raw: dict[str, dict[str, Any]] = {}
    for key, text in params.items():
        section, _, name = key.partition(".")
        if section not in hints or not dataclasses.is_dataclass(hints[section]):
            continue
        field_types = get_type_hints(hints[section])
        if name not in field_types:
            log.warning("run param %s is not a config key any more; ignored", key)
            continue
        if field_types[name] is str:
            value: Any = text
        else:
            try:
                value = json.loads(text)
            except ValueError:
                value = text  # a Literal string value is logged raw
        raw.setdefault(section, {})[name] = value
    for item in overrides or []:
        _apply_override(raw, item)
    return from_dict(raw)


def _download_state(client: Any, ref: str, run_id: str) -> dict[str, torch.Tensor]:
    """The run's `encoder.safetensors` as a state_dict; refuse anything else."""
    from safetensors.torch import load_file

    names = {a.path for a in client.list_artifacts(run_id)}
    if ENCODER_FILE not in names:
        raise UnsafeModelError(
            f"{ref}: run {run_id} has no {ENCODER_FILE} artifact; mocopipe loads encoder "
            "weights only from it and never unpickles a logged MLflow model")
    with tempfile.TemporaryDirectory(prefix="mocopipe-encoder-") as tmp:
        return load_file(client.download_artifacts(run_id, ENCODER_FILE, tmp))


def load_encoder_state(ref: str, *, tracking_uri: str | None = None
                       ) -> tuple[dict[str, torch.Tensor], str | None]:
    """(backbone state_dict, training run id) of `ref`: a local ``*.safetensors`` file (run id
    None) or a model reference (see `resolve_source`) whose run has `encoder.safetensors`."""
    if ref.endswith(".safetensors") and "://" not in ref and ":/" not in ref:
        from safetensors.torch import load_file

        if not os.path.isfile(ref):
            raise FileNotFoundError(f"{ref}: no such safetensors file")
        return load_file(ref), None
    client = client_for(tracking_uri or resolve_tracking_uri(MlflowConfig()))
    run_id, _, _ = resolve_source(client, ref)
    return _download_state(client, ref, run_id), run_id


def load_encoder(ref: str, *, config: str | None = None, overrides: list[str] | None = None,
                 tracking_uri: str | None = None) -> LoadedEncoder:
    """Resolve `ref` (see `resolve_source`), rebuild its config, and load its backbone from
    the run's `encoder.safetensors` (strict key check; `UnsafeModelError` without it).

    The config is the training run's params, or the `config` TOML when given; `overrides`
    (`section.key=value`) apply on top.
    """
    uri = tracking_uri or resolve_tracking_uri(MlflowConfig())
    client = client_for(uri)
    run_id, name, version = resolve_source(client, ref)
    run = client.get_run(run_id)
    if not run.data.params and not config:
        raise ConfigError(f"{ref}: run {run_id} has no params to rebuild the model from; "
                          "pass --config with the training config")
    cfg = (load_config(config, overrides) if config
           else config_from_params(run.data.params, overrides))
    backbone = build_encoder(cfg.model, in_channels=cfg.data.channels)
    state = _download_state(client, ref, run_id)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{ref}: {ENCODER_FILE} of run {run_id} does not fit model.arch="
                         f"{cfg.model.arch!r} width={cfg.model.width}: {exc}") from exc
    label = f"{name} v{version}" if name else f"run {run_id[:8]}"
    return LoadedEncoder(backbone, cfg, run_id, run.info.experiment_id, label, name, version)
