"""Validation: every rule names the dotted key, the value and what it must be."""

from __future__ import annotations

from typing import Any

from pipeline.config.methods import validate_methods
from pipeline.config.sections import Config, ConfigError


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
    _need(i.device_prefetch >= 0, "ingest.device_prefetch", i.device_prefetch, "must be >= 0")
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
    _need(t.report_every >= 1, "train.report_every", t.report_every, "must be >= 1")
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
