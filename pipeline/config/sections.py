"""The config sections: one dataclass per component, and `Config`, the tree of them.

Secrets are never config fields: S3 and MLflow credentials come from the environment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal



from pipeline.config.methods import MethodConfig, MocoV3Config, SimclrConfig


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
    device_prefetch: int = 2  # on CUDA: batches copied to the GPU ahead of the step (0: off)
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
    report_every: int = 100  # steps between ray.train.report calls (at log steps; a barrier)
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
