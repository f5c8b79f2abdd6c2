"""The typed config tree: one dataclass per section, loaded from TOML, validated up front.

`load_config(path, overrides)` is the only entry point most code needs. Every problem is
raised as `ConfigError` whose message starts with the dotted key it is about, e.g.
``moco.queue_size: 1000 is not divisible by the global batch 64 (...)``.

Secrets are never config fields: S3 and MLflow credentials come from the environment.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from pipeline.config_methods import MethodConfig, MocoV3Config, SimclrConfig, validate_methods


class ConfigError(ValueError):
    """A bad configuration value; the message names the dotted key and the value."""


# ----------------------------------------------------------------------------- sections


@dataclass
class StorageConfig:
    """Object storage. Credentials never come from here: boto3's default chain (env, shared
    credentials file / AWS_PROFILE, SSO, web identity, instance role) supplies them."""

    endpoint_url: str = ""  # "" -> AWS_ENDPOINT_URL(_S3) from the environment, else AWS
    region: str = ""  # "" -> boto3 decides (AWS_DEFAULT_REGION, profile); us-east-1 if endpoint
    addressing: str = "auto"  # auto (path-style iff an endpoint is set) | path | virtual
    max_retries: int = 5  # attempts per request on connection errors / 5xx
    retry_backoff_s: float = 0.5  # first backoff; doubles each retry
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    multipart_threshold_mb: int = 64
    multipart_chunk_mb: int = 16


@dataclass
class DataConfig:
    """What to train on. A dataset is a `s3://bucket/prefix` or local folder holding
    manifest.json, or the URI of a manifest file (``*.json``, e.g. from `shards index`)."""

    train: str = ""  # dataset folder or manifest .json (unlabelled is fine)
    eval_train: str = ""  # labelled shards: kNN bank / probe train set ("" = no kNN monitor)
    eval_test: str = ""  # labelled shards: kNN queries / probe test set
    image_size: int = 224  # side of each augmented view, pixels
    channels: int = 3  # 1 (grayscale) or 3 (RGB); decoded images are converted to this
    # Train on these shard keys of data.train's manifest only (manifest order); [] = all.
    # Set by `mocopipe nightly` (new shards + replay); rarely written by hand.
    train_shards: list[str] = field(default_factory=list)


@dataclass
class AugmentConfig:
    """MoCo v2 "aug+". The crop/flip run on readers (CPU); the rest is batched on the device."""

    crop_scale_min: float = 0.2
    crop_scale_max: float = 1.0
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class IngestConfig:
    """Ray reader actors feeding each train worker."""

    readers_per_worker: int = 2
    reader_num_cpus: float = 1.0
    reader_resources: dict[str, float] = field(default_factory=dict)  # e.g. {"reader": 0.01}
    batches_in_flight: int = 4  # per train worker, across its readers (backpressure bound)
    shuffle_window: int = 2048  # samples in each reader's seeded shuffle buffer
    read_ahead_mb: int = 16  # network read-ahead buffer per reader
    stream_ranges: int = 1  # ranged GETs of one shard in flight (1: one sequential GET; see README)
    range_block_mb: int = 4  # bytes per ranged GET
    synthetic: bool = False  # pre-built uint8 batches, no reading (`bench pipeline`'s bare loop)
    max_corrupt_fraction: float = 0.01
    placement_timeout_s: float = 60.0  # wait for a node offering the asked resources, then fail


@dataclass
class ModelConfig:
    arch: Literal["small_cnn", "resnet18", "resnet50", "vit_tiny", "vit_small"] = "resnet50"
    small_images: bool = False  # 3x3 stem, no max-pool (for inputs <= 64 px)
    width: int = 64  # base width (torchvision: 64); the small CNN uses it as its first width
    pool_grid: int = 1  # small_cnn only: final avg-pool grid side (features 4*width*grid^2)
    patch_size: int = 16  # vit_* only: side of a patch; must divide data.image_size


@dataclass
class MocoConfig:
    dim: int = 128
    queue_size: int = 65536  # K
    momentum: float = 0.999  # m
    momentum_cosine: bool = False  # cosine-increase m to 1.0 over training
    temperature: float = 0.2  # T
    mlp: bool = True
    symmetric: bool = False
    bn: Literal["shuffle", "split", "sync", "none"] = "shuffle"
    bn_splits: int = 8  # for bn = "split" (simulated devices in one process)


@dataclass
class OptimConfig:
    name: Literal["sgd", "lars", "adamw"] = "sgd"  # lars: SimCLR's; adamw: MoCo v3's
    lr: float = 0.03  # for a global batch of `base_batch`; scaled linearly
    base_batch: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False
    warmup_epochs: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 0.0  # 0 = off
    lars_eta: float = 0.001  # LARS trust coefficient
    beta2: float = 0.999  # AdamW second-moment decay (beta1 = optim.momentum)


@dataclass
class TrainConfig:
    name: str = "mocopipe"  # the config's name: MLflow experiment and run-name prefix
    epochs: int = 200
    max_steps: int = 0  # 0 = no cap
    per_worker_batch: int = 32
    seed: int = 0
    log_every: int = 10
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    max_nonfinite: int = 10  # fail after this many skipped non-finite steps
    # Warm start: a registered encoder ("models:/NAME/VERSION", "models:/NAME@ALIAS") or a run
    # artifact ("runs:/RUN_ID/encoder") whose backbone weights initialise the query and key
    # encoders of a NEW run (a resumed run loads its checkpoint instead). "" = random init.
    init_from: str = ""
    allow_changed_resume: bool = False  # resume a checkpoint written with other data/config


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep: int = 3
    max_upload_failures: int = 3  # consecutive failed uploads before the run fails
    flush_timeout_s: float = 120.0  # metrics flush before a commit (else: not committed)


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # "" -> MLFLOW_TRACKING_URI from the environment
    experiment: str = ""  # "" -> train.name
    registered_model: str = ""  # "" -> "<train.name>-encoder"
    system_metrics: bool = True
    flush_every_s: float = 5.0


@dataclass
class RayConfig:
    address: str = ""  # "" -> RAY_ADDRESS from the environment, else an embedded local Ray
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    max_failures: int = 2
    storage_path: str = ""  # Ray Train run storage ("" -> ~/ray_results)
    run_name: str = ""  # "" -> "<train.name>-<timestamp>"; reuse a name to resume


@dataclass
class EvalConfig:
    every_epochs: int = 1  # kNN monitor cadence (0 = only at the end)
    knn_k: int = 200
    knn_t: float = 0.1
    max_bank: int = 0  # cap on bank samples (0 = all)
    max_queries: int = 0  # cap on query samples (0 = all)
    probe_epochs: int = 100
    probe_lr: float = 0.1
    probe_wd: float = 0.0


@dataclass
class NightlyConfig:
    replay_fraction: float = 0.25  # share of older shards mixed into a nightly run
    warm_start: Literal["champion", "checkpoint", "none"] = "champion"
    alias: str = "champion"


@dataclass
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    simclr: SimclrConfig = field(default_factory=SimclrConfig)
    moco_v3: MocoV3Config = field(default_factory=MocoV3Config)

    @property
    def global_batch(self) -> int:
        return self.train.per_worker_batch * self.ray.num_workers

    @property
    def scaled_lr(self) -> float:
        return self.optim.lr * self.global_batch / self.optim.base_batch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`{"section.key": value}` for MLflow params (no secrets live in the tree)."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out


# ----------------------------------------------------------------------------- loading


def shipped_configs() -> dict[str, str]:
    """`{name: TOML text}` of the configs shipped in the package (jobs/configs/*.toml)."""
    from importlib.resources import files

    folder = files("jobs").joinpath("configs")
    return {Path(f.name).stem: f.read_text() for f in folder.iterdir()
            if f.name.endswith(".toml")}


def config_source(config: str | Path) -> tuple[str, str]:
    """(name, TOML text) of `config`: a TOML file's path, or a shipped config's name ("demo")."""
    p = Path(config)
    if p.is_file():
        return p.stem, p.read_text()
    shipped = shipped_configs() if p.suffix == "" and len(p.parts) == 1 else {}
    if str(config) in shipped:
        return str(config), shipped[str(config)]
    raise ConfigError(f"config file: {str(config)!r} does not exist (nor is it a shipped config: "
                      f"{', '.join(sorted(shipped_configs()))})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read TOML (a path or a shipped config's name; None = defaults), apply `section.key=value`
    overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        _name, text = config_source(path)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file: {str(path)!r} is not valid TOML: {exc}") from exc
    for item in overrides or []:
        _apply_override(raw, item)
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (e.g. parsed TOML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a table of sections, got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(
                f"{name}: unknown section; valid sections: {', '.join(sorted(sections))}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table, got {value!r}")
        section_type = get_type_hints(Config)[name]
        kwargs[name] = _build_section(name, section_type, value)
    cfg = Config(**kwargs)
    validate(cfg)
    return cfg


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"{section}.{key}: unknown key; valid keys of [{section}]: {', '.join(valid)}"
            )
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp` (int -> float widening allowed)."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(key, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} has the wrong type (expected {tp})")
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", val_tp, v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported annotation {tp} for {key}")  # internal invariant


def _parse_scalar(text: str) -> Any:
    """Parse the right side of `--set k=v` as a TOML value; fall back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, text = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {dotted!r}: expected section.key (e.g. train.max_steps=20)")
    section, key = parts
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError(f"{section}: expected a table, got {target!r}")
    target[key] = _parse_scalar(text.strip())


# ----------------------------------------------------------------------------- validation


def _need(cond: bool, key: str, value: Any, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {value!r} {rule}")


def _check_uri(key: str, value: str) -> None:
    if value.startswith("s3://"):
        rest = value[len("s3://") :]
        _need(bool(rest) and not rest.startswith("/"), key, value, "must be s3://bucket/prefix")
    elif "://" in value:
        _need(False, key, value, "must be s3://bucket/prefix or a local path")


def validate_training(cfg: Config) -> None:
    """`validate` plus what only training needs (a dataset to train on); ConfigError."""
    validate(cfg)
    _need(bool(cfg.data.train.strip()), "data.train", cfg.data.train,
          "must name the dataset to train on (s3://BUCKET/DATASET or a local folder)")


def validate(cfg: Config) -> None:
    """Range and cross-field rules. Raises ConfigError naming the first bad key."""
    s, d, a, i = cfg.storage, cfg.data, cfg.augment, cfg.ingest
    _need(s.max_retries >= 0, "storage.max_retries", s.max_retries, "must be >= 0")
    _need(s.retry_backoff_s >= 0, "storage.retry_backoff_s", s.retry_backoff_s, "must be >= 0")
    _need(s.connect_timeout_s > 0, "storage.connect_timeout_s", s.connect_timeout_s, "must be > 0")
    _need(s.read_timeout_s > 0, "storage.read_timeout_s", s.read_timeout_s, "must be > 0")
    _need(s.multipart_chunk_mb >= 5, "storage.multipart_chunk_mb", s.multipart_chunk_mb,
          "must be >= 5 (the S3 minimum part size)")
    _need(s.multipart_threshold_mb >= 1, "storage.multipart_threshold_mb",
          s.multipart_threshold_mb, "must be >= 1")
    if s.endpoint_url:
        _need(s.endpoint_url.startswith(("http://", "https://")), "storage.endpoint_url",
              s.endpoint_url, "must start with http:// or https://")
    _need(s.addressing in ("auto", "path", "virtual"), "storage.addressing", s.addressing,
          "must be auto, path or virtual")

    for key in ("train", "eval_train", "eval_test"):
        _check_uri(f"data.{key}", getattr(d, key))
    _need(bool(d.eval_train) == bool(d.eval_test), "data.eval_test", d.eval_test,
          "must be set together with data.eval_train (both or neither)")
    _need(8 <= d.image_size <= 1024, "data.image_size", d.image_size, "must be in [8, 1024]")
    _need(d.channels in (1, 3), "data.channels", d.channels, "must be 1 or 3")
    for k, key in enumerate(d.train_shards):
        _need(bool(key) and key.endswith(".tar"), f"data.train_shards[{k}]", key,
              "must be a shard key of the manifest (e.g. 'shard-000000.tar', or the shard's "
              "URI in an index written by `shards index`)")
    _need(len(set(d.train_shards)) == len(d.train_shards), "data.train_shards",
          d.train_shards, "lists a shard twice")

    _need(0 < a.crop_scale_min <= a.crop_scale_max <= 1.0, "augment.crop_scale_min",
          a.crop_scale_min, f"must satisfy 0 < crop_scale_min <= crop_scale_max "
          f"({a.crop_scale_max}) <= 1")
    for key in ("flip_p", "jitter_p", "gray_p", "blur_p"):
        v = getattr(a, key)
        _need(0.0 <= v <= 1.0, f"augment.{key}", v, "must be a probability in [0, 1]")
    for key in ("brightness", "contrast", "saturation"):
        v = getattr(a, key)
        _need(0.0 <= v <= 1.0, f"augment.{key}", v, "must be in [0, 1]")
    _need(0.0 <= a.hue <= 0.5, "augment.hue", a.hue, "must be in [0, 0.5]")
    _need(0 < a.blur_sigma_min <= a.blur_sigma_max, "augment.blur_sigma_min", a.blur_sigma_min,
          f"must satisfy 0 < blur_sigma_min <= blur_sigma_max ({a.blur_sigma_max})")
    for key in ("mean", "std"):
        v = getattr(a, key)
        _need(len(v) == d.channels, f"augment.{key}", v,
              f"must have data.channels={d.channels} entries")
    _need(all(x > 0 for x in a.std), "augment.std", a.std, "entries must be > 0")

    _need(i.readers_per_worker >= 1, "ingest.readers_per_worker", i.readers_per_worker,
          "must be >= 1")
    _need(i.reader_num_cpus >= 0, "ingest.reader_num_cpus", i.reader_num_cpus, "must be >= 0")
    _need(i.batches_in_flight >= 1, "ingest.batches_in_flight", i.batches_in_flight,
          "must be >= 1")
    _need(i.shuffle_window >= 1, "ingest.shuffle_window", i.shuffle_window, "must be >= 1")
    _need(i.read_ahead_mb >= 1, "ingest.read_ahead_mb", i.read_ahead_mb, "must be >= 1")
    _need(i.stream_ranges >= 1, "ingest.stream_ranges", i.stream_ranges, "must be >= 1")
    _need(i.range_block_mb >= 1, "ingest.range_block_mb", i.range_block_mb, "must be >= 1")
    _need(0.0 <= i.max_corrupt_fraction < 1.0, "ingest.max_corrupt_fraction",
          i.max_corrupt_fraction, "must be in [0, 1)")
    for k, v in i.reader_resources.items():
        _need(v >= 0, f"ingest.reader_resources.{k}", v, "must be >= 0")
    _need(i.placement_timeout_s >= 0, "ingest.placement_timeout_s", i.placement_timeout_s,
          "must be >= 0")

    m, mo = cfg.model, cfg.moco
    _need(m.width >= 1, "model.width", m.width, "must be >= 1")
    _need(m.pool_grid >= 1, "model.pool_grid", m.pool_grid, "must be >= 1")
    _need(m.pool_grid == 1 or m.arch == "small_cnn", "model.pool_grid", m.pool_grid,
          f"must be 1 for model.arch={m.arch!r} (ResNets pool globally, as torchvision)")
    _need(mo.dim >= 1, "moco.dim", mo.dim, "must be >= 1")
    _need(0.0 <= mo.momentum < 1.0, "moco.momentum", mo.momentum, "must be in [0, 1)")
    _need(mo.temperature > 0, "moco.temperature", mo.temperature, "must be > 0")
    _need(mo.bn_splits >= 1, "moco.bn_splits", mo.bn_splits, "must be >= 1")

    o, t, c = cfg.optim, cfg.train, cfg.checkpoint
    _need(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _need(o.base_batch >= 1, "optim.base_batch", o.base_batch, "must be >= 1")
    _need(0.0 <= o.momentum < 1.0, "optim.momentum", o.momentum, "must be in [0, 1)")
    _need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _need(o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "must be >= 0")
    _need(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0 (0 = off)")
    _need(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    _need(t.max_steps >= 0, "train.max_steps", t.max_steps, "must be >= 0 (0 = no cap)")
    _need(t.per_worker_batch >= 2, "train.per_worker_batch", t.per_worker_batch, "must be >= 2")
    _need(t.log_every >= 1, "train.log_every", t.log_every, "must be >= 1")
    _need(t.seed >= 0, "train.seed", t.seed, "must be >= 0")
    _need(t.max_nonfinite >= 0, "train.max_nonfinite", t.max_nonfinite, "must be >= 0")
    _need(t.init_from == "" or t.init_from.startswith(("models:/", "runs:/")), "train.init_from",
          t.init_from, "must be '' or an MLflow model URI (models:/NAME/VERSION, "
          "models:/NAME@ALIAS, runs:/RUN_ID/PATH)")
    _need(bool(t.name) and t.name.replace("-", "").replace("_", "").isalnum(), "train.name",
          t.name, "must be non-empty letters, digits, '-' or '_'")
    _need(c.every_steps >= 1, "checkpoint.every_steps", c.every_steps, "must be >= 1")
    _need(c.keep >= 1, "checkpoint.keep", c.keep, "must be >= 1")
    _need(c.max_upload_failures >= 1, "checkpoint.max_upload_failures", c.max_upload_failures,
          "must be >= 1")
    _need(c.flush_timeout_s > 0, "checkpoint.flush_timeout_s", c.flush_timeout_s, "must be > 0")

    r, e, n = cfg.ray, cfg.eval, cfg.nightly
    _need(r.num_workers >= 1, "ray.num_workers", r.num_workers, "must be >= 1")
    _need(r.cpus_per_worker >= 0, "ray.cpus_per_worker", r.cpus_per_worker, "must be >= 0")
    _need(r.max_failures >= -1, "ray.max_failures", r.max_failures, "must be >= -1 (-1 = forever)")
    _need(cfg.mlflow.flush_every_s > 0, "mlflow.flush_every_s", cfg.mlflow.flush_every_s,
          "must be > 0")
    _need(e.every_epochs >= 0, "eval.every_epochs", e.every_epochs, "must be >= 0")
    _need(e.knn_k >= 1, "eval.knn_k", e.knn_k, "must be >= 1")
    _need(e.knn_t > 0, "eval.knn_t", e.knn_t, "must be > 0")
    _need(e.probe_epochs >= 1, "eval.probe_epochs", e.probe_epochs, "must be >= 1")
    _need(0.0 <= n.replay_fraction <= 1.0, "nightly.replay_fraction", n.replay_fraction,
          "must be in [0, 1]")

    # Cross-field rules.
    g = cfg.global_batch
    per_step = 2 * g if mo.symmetric else g  # keys enqueued per step (both views: symmetric)
    queue_ok = mo.queue_size >= per_step and mo.queue_size % per_step == 0
    _need(cfg.method.name != "moco_v2" or queue_ok, "moco.queue_size", mo.queue_size, ("must be a positive multiple of 2 x the global batch "
                          f"{g} = {per_step} keys enqueued per step (moco.symmetric=true) "
                          if mo.symmetric else f"must be a positive multiple of the global "
                          f"batch {g} ") + f"(train.per_worker_batch={t.per_worker_batch} x "
          f"ray.num_workers={r.num_workers})")
    if mo.bn == "split":
        _need(t.per_worker_batch % mo.bn_splits == 0, "moco.bn_splits", mo.bn_splits,
              f"must divide train.per_worker_batch={t.per_worker_batch}")
    _need(not (r.use_gpu and mo.bn == "split"), "moco.bn", mo.bn,
          "'split' simulates devices in one process; use 'shuffle' with ray.use_gpu=true")
    if m.arch == "small_cnn":
        _need(d.image_size <= 64, "data.image_size", d.image_size,
              "must be <= 64 for model.arch='small_cnn'")
        last = -(-d.image_size // 8)  # side of the small CNN's last feature map
        _need(m.pool_grid <= last, "model.pool_grid", m.pool_grid,
              f"must be <= {last}, the side of the last feature map at data.image_size="
              f"{d.image_size}")
    validate_methods(cfg)
