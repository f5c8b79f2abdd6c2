"""`mocopipe submit` against the local stack's Ray head (token auth on): a real pretraining job."""

from __future__ import annotations

import json
import os
import re
import urllib.request
import uuid
from pathlib import Path

import pytest

from pipeline.envvars import SECRET_ENV, secret_values
from pipeline.orchestrate import submit as jobs
from pipeline.cli import main
from tests.orchestrate.conftest import tiny_overrides

pytestmark = pytest.mark.integration


def _secret_values() -> list[str]:
    values = secret_values()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] in values and os.environ["RAY_AUTH_TOKEN"] in values
    return values


def test_submit_wait_runs_pretrain_to_success_without_secrets_in_ray(stack, jobs_data, capsys,
                                                                     tmp_path) -> None:
    name = f"jobs-submit-{uuid.uuid4().hex[:6]}"
    sid = f"{name}-1"
    argv = ["submit", "demo", "--wait", "--submission-id", sid]  # a shipped config, by name
    for item in tiny_overrides(jobs_data, name):
        argv += ["--set", item]
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert f"job {sid} SUCCEEDED" in out
    overhead = next(line for line in out.splitlines() if line.startswith("first training step"))
    with capsys.disabled():  # the submission overhead, for the record (not asserted on)
        print(f"\n[jobs] {overhead}")
    assert '"steps": 4' in out  # the job's own JSON summary: it read S3 and logged to MLflow
    assert "MLFLOW_TRACKING_URI" in out  # the forwarded names are shown ...
    secrets = _secret_values()
    for value in secrets:  # ... never a secret value
        assert value not in out

    client = jobs.connect()
    info = client.get_job_info(sid)
    assert info.metadata["mocopipe.config"] == "demo"
    sha = info.metadata["mocopipe.git_sha"]  # HEAD at submission (may move while this runs)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", sha), sha
    assert info.entrypoint.startswith(f"python -m jobs.pretrain --config {jobs.CONFIG_FILE}")
    # What Ray shows anyone who can read the dashboard: the job record and its logs.
    url = f"{os.environ['RAY_API_SERVER_ADDRESS'].rstrip('/')}/api/jobs/{sid}"
    request = urllib.request.Request(
        url, headers={"authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        record = resp.read().decode()
    env_vars = json.loads(record)["runtime_env"]["env_vars"]
    assert "MLFLOW_TRACKING_URI" in env_vars and "AWS_SECRET_ACCESS_KEY" not in env_vars
    assert not set(env_vars) & set(SECRET_ENV)
    job_logs = jobs.logs(client, sid)
    for value in secrets:
        assert value not in record and value not in job_logs
    capsys.readouterr()
    assert main(["jobs", "ls"]) == 0
    listing = capsys.readouterr().out
    assert sid in listing and "SUCCEEDED" in listing
    # The tracking run knows which job produced it, and holds no secret anywhere.
    from pipeline.tracking import client_for

    mlflow = client_for(os.environ["MLFLOW_TRACKING_URI"])
    exp = mlflow.get_experiment_by_name(name)
    (run,) = mlflow.search_runs([exp.experiment_id])
    assert run.data.tags["ray.submission_id"] == sid
    assert run.data.tags["mocopipe.git_sha"] == sha  # passed to the job as MOCOPIPE_GIT_SHA
    assert run.data.metrics["loss"] > 0  # logged to MLflow without the MLflow secrets forwarded
    fields = json.dumps([run.data.params, run.data.tags])
    local = mlflow.download_artifacts(run.info.run_id, "", str(tmp_path))
    files = [p for p in Path(local).rglob("*") if p.is_file()]
    assert files  # checkpoint / encoder artifacts exist
    for value in secrets:
        assert value not in fields
        for path in files:
            assert value.encode() not in path.read_bytes(), path


def test_missing_token_is_a_clear_error(stack, monkeypatch, capsys) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("HOME", os.environ.get("TMPDIR", "/tmp") + f"/no-home-{uuid.uuid4().hex}")
    monkeypatch.setenv("MOCOPIPE_STATE_DIR", os.environ["HOME"])  # no local stack state there
    assert main(["jobs", "ls"]) == 2
    err = capsys.readouterr().err
    assert "requires token authentication" in err and "RAY_AUTH_TOKEN" in err


def test_wrong_token_is_rejected(stack, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    assert main(["jobs", "ls"]) == 2
    assert "rejected the auth token" in capsys.readouterr().err


def test_config_outside_the_project_is_shipped_as_its_content(tmp_path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text('[train]\nname = "x"\n')
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    assert jobs.stage_config(jobs.JobSpec(module="jobs.pretrain", config=str(cfg)), job_dir) == "x"
    assert (job_dir / jobs.CONFIG_FILE).read_text() == cfg.read_text()
