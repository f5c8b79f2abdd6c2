"""Training: a Trainer, a one-screen loop, its services, and the Ray Train wiring.

    trainer.py      Trainer: step(view1, view2) -> StepStats, state_dict / load_state_dict
    loop.py         train(trainer, loader, services, ...): load -> step/log/eval/save -> export
    services.py     MetricSink, ArtifactRepo, Evaluator: MLflow and in-memory/local versions
    worker.py       one Ray Train worker: production services + Loader + Trainer -> loop
    ray_trainer.py  run_training(cfg, resume=None): the driver (TorchTrainer, MLflow run)
    checkpoint.py   CheckpointManager: atomic, pruned, verified checkpoints in an ArtifactRepo
    state.py        what a checkpoint holds; RNG states; run fingerprint; gathering to rank 0
    lr_schedule.py  warmup + cosine LR, cosine momentum (pure functions of the step)
    monitor.py      KnnMonitor (the Evaluator)
    export.py       encoder.safetensors, plots, registered model
"""
