"""The S3 client as boto3's default chain builds it: credentials, region, endpoint,
addressing, and the one-line errors. No server: nothing here sends a request, except to a
loopback port nobody listens on."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Config, ConfigError, StorageConfig, validate
from pipeline.storage import Storage, StorageError
from tests.storage.conftest import write_profile

pytestmark = pytest.mark.unit
ENDPOINT = "http://127.0.0.1:9"


def test_no_credentials_anywhere_is_one_line_naming_the_chain(bare_aws: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        Storage(StorageConfig(endpoint_url=ENDPOINT)).check_access("s3://corpus/ds")
    msg = str(err.value)
    assert time.monotonic() - t0 < 10
    assert "\n" not in msg and "no AWS credentials found" in msg and ENDPOINT in msg
    for source in ("default credential chain", "AWS_ACCESS_KEY_ID", str(bare_aws / "credentials"),
                   str(bare_aws / "config"), "web identity", "SSO", "container credentials",
                   "instance metadata (instance role) [disabled by AWS_EC2_METADATA_DISABLED]"):
        assert source in msg, (source, msg)


@pytest.mark.parametrize("missing", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_half_a_key_pair_is_no_credentials(bare_aws: Path, monkeypatch: pytest.MonkeyPatch,
                                           missing: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.delenv(missing)
    with pytest.raises(StorageError, match=missing) as err:
        Storage(StorageConfig(endpoint_url=ENDPOINT)).check_access("s3://b/x")
    assert "\n" not in str(err.value)


def test_credentials_from_a_profile_only(bare_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profile(bare_aws, "moco", "PROFILEKEY", "profile-secret", region="eu-west-3")
    monkeypatch.setenv("AWS_PROFILE", "moco")
    s = Storage(StorageConfig(endpoint_url=ENDPOINT))
    url = s.client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    assert "X-Amz-Credential=PROFILEKEY%2F" in url  # signed with the profile's key
    assert s.backend("s3://b/k").credential_source == "shared-credentials-file"
    assert s.client.meta.region_name == "eu-west-3"  # the profile's region, not a default


def test_a_missing_profile_is_named(bare_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(StorageError, match="nope.*AWS_PROFILE names a profile"):
        Storage(StorageConfig(endpoint_url=ENDPOINT)).check_access("s3://b/x")


@pytest.mark.parametrize("cfg_region,env_region,endpoint,expected", [
    ("", "eu-central-1", ENDPOINT, "eu-central-1"),  # AWS_DEFAULT_REGION wins over defaults
    ("", "eu-central-1", "", "eu-central-1"),
    ("ap-south-1", "eu-central-1", ENDPOINT, "ap-south-1"),  # an explicit config wins
    ("", "", ENDPOINT, "us-east-1"),  # custom endpoint, nothing resolved: signing fallback
])
def test_region(bare_aws: Path, monkeypatch: pytest.MonkeyPatch, cfg_region: str,
                env_region: str, endpoint: str, expected: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    if env_region:
        monkeypatch.setenv("AWS_DEFAULT_REGION", env_region)
    s = Storage(StorageConfig(endpoint_url=endpoint, region=cfg_region))
    assert s.client.meta.region_name == expected


class _Sent(Exception):
    """Raised instead of sending: carries the URL the request would have gone to."""


@pytest.mark.parametrize("addressing,endpoint,url", [
    ("auto", ENDPOINT, f"{ENDPOINT}/bucket/key"),
    ("auto", "", "https://bucket.s3.eu-central-1.amazonaws.com/key"),
    ("path", "", "https://s3.eu-central-1.amazonaws.com/bucket/key"),
    ("virtual", "http://store.example:9000", "http://bucket.store.example:9000/key"),
])
def test_addressing(bare_aws: Path, monkeypatch: pytest.MonkeyPatch, addressing: str,
                    endpoint: str, url: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    s = Storage(StorageConfig(endpoint_url=endpoint, addressing=addressing))

    def stop(request: Any, **_: object) -> None:
        raise _Sent(request.url)

    s.client.meta.events.register("before-send.s3.HeadObject", stop)
    with pytest.raises(_Sent) as sent:
        s.head("s3://bucket/key")
    assert str(sent.value) == url


def test_addressing_is_validated() -> None:
    with pytest.raises(ConfigError, match="storage.addressing: 'dns' must be auto, path or"):
        validate(Config(storage=StorageConfig(addressing="dns")))
    assert StorageConfig().region == "" and StorageConfig().addressing == "auto"


def test_endpoint_from_environment(bare_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    s = Storage()
    assert s.endpoint == "http://127.0.0.1:1234"
    assert s.client.meta.endpoint_url == "http://127.0.0.1:1234"
    assert Storage(StorageConfig(endpoint_url="http://h:1")).endpoint == "http://h:1"


def test_connection_refused_names_the_endpoint(bare_aws: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    endpoint = f"http://127.0.0.1:{port}"
    s = Storage(StorageConfig(endpoint_url=endpoint, max_retries=0, connect_timeout_s=2))
    with pytest.raises(StorageError, match=f"cannot connect to S3 endpoint {endpoint}"):
        s.check_access("s3://corpus/ds")
    with pytest.raises(StorageError, match=endpoint):
        s.get_bytes("s3://corpus/ds/manifest.json")
