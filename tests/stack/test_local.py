"""Integration tests of the local stack: real SeaweedFS, MLflow server and Ray head."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from pipeline.stack import local as stack_mod
from pipeline.stack.procs import port_free

pytestmark = pytest.mark.integration


def _s3(info: stack_mod.StackInfo, key: str | None = None, secret: str | None = None):  # noqa: ANN202
    return boto3.client("s3", endpoint_url=info.s3_endpoint, region_name="us-east-1",
                        aws_access_key_id=key or info.access_key,
                        aws_secret_access_key=secret or info.secret_key,
                        config=BotoConfig(retries={"max_attempts": 1}))


def test_s3_put_get_with_generated_credentials(stack: stack_mod.StackInfo, storage) -> None:  # noqa: ANN001
    key = f"test-stack-{uuid.uuid4().hex}/hello.bin"
    payload = os.urandom(4096)
    _s3(stack).put_object(Bucket="corpus", Key=key, Body=payload)
    assert _s3(stack).get_object(Bucket="corpus", Key=key)["Body"].read() == payload
    # the Storage built from the fixture's environment sees the same object
    assert storage.get_bytes(f"s3://corpus/{key}") == payload
    buckets = {b["Name"] for b in _s3(stack).list_buckets()["Buckets"]}
    assert {"corpus", "mlflow"} <= buckets


@pytest.mark.parametrize("which", ["wrong-secret", "unknown-key"])
def test_wrong_credentials_are_rejected(stack: stack_mod.StackInfo, which: str) -> None:
    key, secret = ((stack.access_key, "not-the-secret") if which == "wrong-secret"
                   else ("AKIAUNKNOWN0000000000", stack.secret_key))
    with pytest.raises(ClientError) as err:
        _s3(stack, key, secret).list_objects_v2(Bucket="corpus")
    assert err.value.response["Error"]["Code"] in {"SignatureDoesNotMatch",
                                                   "InvalidAccessKeyId", "AccessDenied"}
    # and anonymous HTTP cannot read either
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(f"{stack.s3_endpoint}/corpus/", timeout=5)  # noqa: S310
    assert http_err.value.code == 403


def test_credentials_file_is_private_and_secrets_stay_out_of_state(
        stack: stack_mod.StackInfo) -> None:
    creds = Path(stack.state_dir) / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    state_text = (Path(stack.state_dir) / "stack.json").read_text()
    for secret in (stack.secret_key, stack.ray_token):
        assert secret not in state_text
    for name in ("s3", "mlflow", "ray"):
        log = (Path(stack.state_dir) / "logs" / f"{name}.log").read_text(errors="replace")
        assert stack.secret_key not in log and stack.ray_token not in log, name


def test_mlflow_run_roundtrips_metric_and_artifact_into_bucket(
        stack: stack_mod.StackInfo, tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    with urllib.request.urlopen(f"{stack.mlflow_uri}/health", timeout=5) as resp:  # noqa: S310
        assert resp.status == 200
    mlflow.set_tracking_uri(stack.mlflow_uri)
    mlflow.set_experiment(f"test-stack-{uuid.uuid4().hex[:8]}")
    note = tmp_path / "note.txt"
    note.write_text("moco")
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 1.25, step=3)
        mlflow.log_artifact(str(note))
    client = MlflowClient(stack.mlflow_uri)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(3, 1.25)]
    got = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert Path(got).read_text() == "moco"
    # the artifact went through the server's proxy into the `mlflow` bucket
    listing = _s3(stack).list_objects_v2(Bucket="mlflow", Prefix="artifacts/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert any(run.info.run_id in k and k.endswith("note.txt") for k in keys), keys


_RAY_PROBE = """
import json, os, ray
from ray.job_submission import JobSubmissionClient
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
@ray.remote
def probe(x):
    return x * 2, os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("MLFLOW_TRACKING_URI")
value, s3, ml = ray.get(probe.remote(21))
cpus = ray.cluster_resources().get("CPU")
ray.shutdown()
jobs = JobSubmissionClient().list_jobs()
print(json.dumps({"value": value, "s3": s3, "mlflow": ml, "cpus": cpus, "jobs": len(jobs)}))
"""


def test_ray_client_connects_and_workers_inherit_stack_env(stack: stack_mod.StackInfo) -> None:
    res = subprocess.run([sys.executable, "-c", _RAY_PROBE], env={**os.environ, **stack.env},
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["value"] == 42
    assert out["s3"] == stack.s3_endpoint and out["mlflow"] == stack.mlflow_uri
    assert out["cpus"] == 8.0
    assert out["jobs"] >= 0


def test_ray_dashboard_rejects_requests_without_the_token(stack: stack_mod.StackInfo) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.ray_dashboard}/api/jobs/", timeout=5)  # noqa: S310
    assert err.value.code in (401, 403)
    req = urllib.request.Request(f"{stack.ray_dashboard}/api/jobs/",
                                 headers={"Authorization": f"Bearer {stack.ray_token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        assert resp.status == 200


def test_up_again_reuses_the_running_stack(stack: stack_mod.StackInfo) -> None:
    before = stack_mod.load_state(stack.state_dir)
    assert before is not None
    again = stack_mod.up(stack.state_dir)
    assert again.ports == before.ports and again.procs == before.procs
    assert all(r.alive() for r in again.refs("s3") + again.refs("mlflow"))
    assert stack_mod.health(stack.state_dir) == {"s3": True, "mlflow": True, "ray": True}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def second_state_dir() -> Iterator[str]:
    """A state dir for a second stack; whatever it started is stopped and deleted after."""
    sdir = tempfile.mkdtemp(prefix="mocopipe-stack2-")
    try:
        yield sdir
    finally:
        stack_mod.down(sdir, purge=True)


@pytest.mark.slow
def test_cli_up_status_env_down_purge_on_a_second_stack(stack: stack_mod.StackInfo,
                                                        second_state_dir: str) -> None:
    """A second stack beside the session's: both run at once, `down` stops only its own."""
    sdir = second_state_dir
    up = _cli("up", "--state-dir", sdir)
    assert up.returncode == 0, up.stdout + up.stderr
    state = stack_mod.load_state(sdir)
    assert state is not None
    assert state.ports["s3"] != stack_mod.load_state(stack.state_dir).ports["s3"]
    refs = state.refs()
    assert len(refs) >= 5 and all(r.alive() for r in state.refs("s3"))

    again = _cli("up", "--state-dir", sdir)
    assert again.returncode == 0 and "reusing" in again.stdout
    assert stack_mod.load_state(sdir).procs == state.procs

    status = _cli("status", "--state-dir", sdir)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == 3 and state.mlflow_uri in status.stdout

    env = _cli("env", "--state-dir", sdir)
    exported = dict(line[len("export "):].split("=", 1) for line in env.stdout.splitlines())
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        assert key in exported, key
    assert exported["AWS_ENDPOINT_URL"] == state.s3_endpoint

    down = _cli("down", "--state-dir", sdir)
    assert down.returncode == 0, down.stderr
    survivors = [r.pid for r in refs if r.alive()]
    assert survivors == []
    assert all(port_free(state.ports[n]) for n in ("s3", "mlflow", "ray_gcs"))
    assert (Path(sdir) / "mlflow.db").exists()  # data stays
    down_status = _cli("status", "--state-dir", sdir)
    assert down_status.returncode == 1 and "DOWN" in down_status.stdout
    # the session stack was not touched
    assert stack_mod.health(stack.state_dir) == {"s3": True, "mlflow": True, "ray": True}

    purge = _cli("down", "--purge", "--state-dir", sdir)
    assert purge.returncode == 0 and not Path(sdir).exists()


def test_taken_port_is_reported_clearly(stack: stack_mod.StackInfo, tmp_path: Path) -> None:
    taken = stack_mod.load_state(stack.state_dir).ports["mlflow"]
    res = _cli("up", "--state-dir", str(tmp_path / "st"), "--mlflow-port", str(taken))
    assert res.returncode != 0
    assert f"port {taken} for mlflow" in res.stderr and "already in use" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "st" / "stack.json").exists()

