"""MLflow tracking: run create/resume, params and tags, batched async metrics, model registry.

One training run is one MLflow run. The driver opens it (`open_run`: a new run, or the
existing one with the same run name / id), logs the resolved config as params and the
provenance tags, and hands the run id to the train workers. Rank 0 then logs metrics
through `MetricLogger`, a background thread that batches them (`log_batch`, <= 1000 per
request) every `flush_every_s`, and keeps them (in order) while the server is unreachable,
delivering them when it is back. Checkpoints are run artifacts (`pipeline.train.checkpoint`);
the final encoder is logged and registered by `pipeline.train.export.log_encoder`.

Secrets never reach MLflow: they are not config fields, and `redact` replaces any value of
a secret environment variable (S3 keys, MLflow tokens) found in a param or tag.
"""

from pipeline.tracking.lineage import *  # noqa: F403
from pipeline.tracking.metrics import *  # noqa: F403
from pipeline.tracking.runs import *  # noqa: F403
from pipeline.tracking.runs import _run_by_id  # noqa: F401
from pipeline.tracking.tags import *  # noqa: F403
