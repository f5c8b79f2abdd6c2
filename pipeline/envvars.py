"""The ONE list of environment variables the project forwards to Ray, and the secrets it never does.

Settings (endpoints, region, tracking URI) may travel in a Ray `runtime_env`: they are not
secret, and a job submitted from a laptop needs them to reach the same stores. Credentials
never travel by default: Ray shows `runtime_env.env_vars` to anyone who can read
`/api/jobs/` or the dashboard and writes them into its logs. Nodes get their credentials
where their owners keep them: the local stack's Ray head is started with them in its
environment, Kubernetes pods take them from a Secret (`envFrom`), cloud nodes from an
instance role / web identity. `forwarded_env(secrets=True)` (the `--forward-secrets` flag)
is the explicit, warned-about exception.

Used by `orchestrate.submit` (job runtime_env), `train.ray_trainer` (attaching to a
cluster) and `tracking` (scrubbing secret values out of params and tags).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

# Non-secret settings a job needs to reach the same S3 and MLflow as the submitter.
SETTINGS_ENV: tuple[str, ...] = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
)

# Credentials: forwarded only with `forward_secrets=True`; their values are scrubbed from
# MLflow params/tags and never printed.
CREDENTIAL_ENV: tuple[str, ...] = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
)

# Every name whose value is a secret (the Ray token is never forwarded, even on request:
# a job already runs inside the cluster it authenticates to).
SECRET_ENV: tuple[str, ...] = CREDENTIAL_ENV + ("RAY_AUTH_TOKEN",)

FORWARD_SECRETS_WARNING = (
    "--forward-secrets: copying the VALUES of {names} into the Ray runtime_env; anyone who "
    "can read the cluster's dashboard or /api/jobs/ can read them, and Ray writes them into "
    "its logs. Prefer credentials on the nodes (instance role, Kubernetes Secret via envFrom)."
)


def forwarded_names(*, secrets: bool = False) -> tuple[str, ...]:
    """The names forwarded to Ray: the settings, plus the credentials when `secrets`."""
    return SETTINGS_ENV + (CREDENTIAL_ENV if secrets else ())


def forwarded_env(names: Sequence[str] = SETTINGS_ENV, *,
                  environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`{name: value}` of `names` that are set (non-empty) in `environ` (default: os.environ).

    The default forwards the settings only. Any credential among `names` (the
    `--forward-secrets` case) is included with a warning that names it (never its value).
    """
    source = os.environ if environ is None else environ
    env = {name: source[name] for name in names if source.get(name)}
    sent = sorted(set(env) & set(SECRET_ENV))
    if sent:
        log.warning(FORWARD_SECRETS_WARNING.format(names=", ".join(sent)))
    return env


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The non-empty values of every secret variable set in `environ` (for scrubbing)."""
    source = os.environ if environ is None else environ
    return [source[name] for name in SECRET_ENV if source.get(name)]
