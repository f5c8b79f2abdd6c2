"""Training: the per-worker loop and its Ray Train wiring.

    loop.py         train(cfg, run, device=...): one rank's loop (plain PyTorch + DDP)
    ray_trainer.py  run_training(cfg, resume=None): the driver (TorchTrainer, MLflow run)
    checkpoint.py   CheckpointManager: atomic, pruned checkpoints as MLflow run artifacts
    state.py        what a checkpoint holds; RNG states; gathering rank states to rank 0
    schedule.py     warmup + cosine LR, cosine momentum (pure functions of the step)
    monitor.py      rank 0 metrics (async MLflow) and the kNN monitor
    export.py       encoder.safetensors, view-pair grid, registered model
    demo.py         `mocopipe demo`
"""
