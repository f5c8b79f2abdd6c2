"""An AWS environment with nothing in it: no key variables, no profile files, no metadata
service. Tests add exactly the one credential source they are about."""

from __future__ import annotations

from pathlib import Path

import pytest

# Everything boto3's chain, region and endpoint resolution read from the environment.
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_SESSION_NAME",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture
def bare_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS credentials anywhere; returns the empty ``~/.aws`` folder (not created)."""
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / ".aws" / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / ".aws" / "config"))
    monkeypatch.setenv("BOTO_CONFIG", str(home / "no-boto.cfg"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never leave loopback
    return home / ".aws"


def write_profile(aws_dir: Path, profile: str, key: str, secret: str,
                  region: str = "") -> None:
    """A shared credentials file (keys) and a config file (region) with one profile."""
    aws_dir.mkdir(parents=True, exist_ok=True)
    (aws_dir / "credentials").write_text(
        f"[{profile}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    if region:
        (aws_dir / "config").write_text(f"[profile {profile}]\nregion = {region}\n")
