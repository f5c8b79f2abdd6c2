"""`mocopipe submit` against the local stack's Ray head (token auth on): a real pretraining job."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from pipeline.orchestrate import submit as jobs
from pipeline.cli import main
from tests.orchestrate.conftest import DEMO, tiny_overrides

pytestmark = pytest.mark.integration


def test_submit_wait_runs_pretrain_to_success(stack, jobs_data, capsys) -> None:
    name = f"jobs-submit-{uuid.uuid4().hex[:6]}"
    sid = f"{name}-1"
    argv = ["submit", DEMO, "--wait", "--submission-id", sid]
    for item in tiny_overrides(jobs_data, name):
        argv += ["--set", item]
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert f"job {sid} SUCCEEDED" in out
    overhead = next(line for line in out.splitlines() if line.startswith("first training step"))
    with capsys.disabled():  # the submission overhead, for the record (not asserted on)
        print(f"\n[jobs] {overhead}")
    assert '"steps": 4' in out  # the job's own JSON summary, streamed back by --wait
    # Secrets travel by name only: no value is ever printed.
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN"):
        assert os.environ[key] not in out
    assert "AWS_SECRET_ACCESS_KEY" in out  # ... but the names are shown

    client = jobs.connect()
    info = client.get_job_info(sid)
    assert info.metadata["mocopipe.config"] == "demo"
    sha = info.metadata["mocopipe.git_sha"]  # HEAD at submission (may move while this runs)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", sha), sha
    assert info.entrypoint.startswith("python -m jobs.pretrain --config jobs/configs/demo.toml")
    capsys.readouterr()
    assert main(["jobs", "ls"]) == 0
    listing = capsys.readouterr().out
    assert sid in listing and "SUCCEEDED" in listing
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in listing
    # The tracking run knows which job produced it.
    from pipeline.tracking import client_for

    mlflow = client_for(os.environ["MLFLOW_TRACKING_URI"])
    exp = mlflow.get_experiment_by_name(name)
    (run,) = mlflow.search_runs([exp.experiment_id])
    assert run.data.tags["ray.submission_id"] == sid
    assert run.data.tags["mocopipe.git_sha"] == sha  # passed to the job as MOCOPIPE_GIT_SHA


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


def test_config_outside_project_is_refused(tmp_path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text("")
    with pytest.raises(jobs.JobsError, match="outside the project"):
        jobs.build_entrypoint(jobs.JobSpec(module="jobs.pretrain", config=str(cfg)))
