"""Build the boto3 S3 client from boto3's default credential chain; say what it tried.

Nothing here reads a secret: boto3 resolves the credentials (env, profile files, SSO, web
identity, container, instance role) and we only ask whether it found any, and from which
source (``credentials.method``, e.g. "env", "shared-credentials-file", "iam-role").
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.config import StorageConfig
from pipeline.storage.base import StorageError

FALLBACK_REGION = "us-east-1"  # only with a custom endpoint and no region resolved at all

# botocore provider METHOD -> what a user would set to feed it
_SOURCES = {
    "env": "environment (AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY)",
    "assume-role": "assume-role in profile {profile}",
    "assume-role-with-web-identity":
        "web identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, e.g. EKS IRSA)",
    "sso": "SSO in profile {profile}",
    "shared-credentials-file": "shared credentials file {creds_file} (profile {profile})",
    "login": "`aws login` session of profile {profile}",
    "custom-process": "credential_process of profile {profile}",
    "config-file": "config file {config_file} (profile {profile})",
    "ec2-credentials-file": "/etc/boto.cfg",
    "boto-config": "boto2 config (BOTO_CONFIG)",
    "container-role": "container credentials (ECS task role / EKS Pod Identity)",
    "iam-role": "EC2 instance metadata (instance role)",
}


def tried_sources(botocore_session: Any) -> list[str]:
    """The credential sources of the session's chain, in the order boto3 tries them."""
    profile = botocore_session.profile or os.environ.get("AWS_PROFILE") or "default"
    fill = {"profile": repr(profile),
            "creds_file": botocore_session.get_config_variable("credentials_file"),
            "config_file": botocore_session.get_config_variable("config_file")}
    out = []
    for provider in botocore_session.get_component("credential_provider").providers:
        text = _SOURCES.get(provider.METHOD, provider.METHOD).format(**fill)
        if provider.METHOD == "iam-role" and _truthy(os.environ.get("AWS_EC2_METADATA_DISABLED")):
            text += " [disabled by AWS_EC2_METADATA_DISABLED]"
        out.append(text)
    return out


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def resolve_region(cfg: StorageConfig, session_region: str | None, endpoint: str) -> str | None:
    """storage.region, else boto3's (AWS_DEFAULT_REGION / profile), else AWS_REGION, else
    "us-east-1" only when a custom endpoint is set; None lets boto3 use its AWS default."""
    region = cfg.region or session_region or os.environ.get("AWS_REGION") or None
    if region is None and endpoint:
        region = FALLBACK_REGION
    return region


def addressing_style(cfg: StorageConfig, endpoint: str) -> str:
    """botocore's s3 addressing_style for storage.addressing ("auto": path iff endpoint)."""
    if cfg.addressing == "auto":
        return "path" if endpoint else "auto"
    return cfg.addressing


def client_for(cfg: StorageConfig, endpoint: str) -> tuple[Any, str]:
    """``(boto3 S3 client, credential source)``; StorageError (one line) when the default
    chain finds no credentials, or names a profile that does not exist."""
    import boto3
    import botocore.session
    from botocore import exceptions as bx
    from botocore.config import Config as BotoConfig

    where = f"endpoint {endpoint or 'AWS default'}"
    try:
        core = botocore.session.get_session()
        session = boto3.session.Session(botocore_session=core)
        creds = session.get_credentials()
    except bx.ProfileNotFound as exc:
        raise StorageError(f"S3 ({where}): {exc} (AWS_PROFILE names a profile that is in "
                           f"neither the credentials nor the config file)") from exc
    except bx.BotoCoreError as exc:  # e.g. an expired SSO token, a broken profile
        raise StorageError(f"S3 ({where}): credentials could not be loaded: {exc}") from exc
    if creds is None:
        raise StorageError(
            f"S3 ({where}): no AWS credentials found; boto3's default credential chain tried: "
            + "; ".join(tried_sources(core))
            + " (`mocopipe env` prints them for the local stack)")
    boto_cfg = BotoConfig(
        retries={"total_max_attempts": cfg.max_retries + 1, "mode": "standard"},
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.read_timeout_s,
        s3={"addressing_style": addressing_style(cfg, endpoint)},
        max_pool_connections=32,
    )
    client = session.client("s3", endpoint_url=endpoint or None,
                            region_name=resolve_region(cfg, session.region_name, endpoint),
                            config=boto_cfg)
    return client, str(getattr(creds, "method", "") or "")
