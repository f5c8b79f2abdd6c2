"""The local stack: SeaweedFS, MLflow server and Ray head on loopback (`local`), how each is launched (`launch`), processes by PID (`procs`). One deployment among many: `train/` never imports it."""
