"""`mocopipe nightly` on the local stack: one Ray job and one MLflow run per (config, date)."""

from __future__ import annotations

import os
import uuid

import pytest

from pipeline.orchestrate import submit as jobs
from pipeline.orchestrate import nightly_plan as plan
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.orchestrate.nightly import run_nightly
from tests.orchestrate.conftest import DEMO, tiny_overrides

pytestmark = pytest.mark.integration


def test_same_night_twice_is_one_job_and_one_run(stack, jobs_data, capsys) -> None:
    name = f"jobs-nightly-{uuid.uuid4().hex[:6]}"
    date = "2026-11-27"
    sid = plan.submission_id(name, date)
    sets = [a for item in tiny_overrides(jobs_data, name, knn=True) for a in ("--set", item)]

    assert main(["nightly", DEMO, "--date", date, *sets]) == 0
    assert f"submitted ({sid})" in capsys.readouterr().out
    # Submitted again while it runs: joined (waits for it), not started a second time.
    rc = main(["nightly", DEMO, "--date", date, "--wait", *sets])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert f"already running: joining it ({sid})" in out or "already succeeded" in out
    assert f"job {sid} SUCCEEDED" in out or "already succeeded" in out
    # And once more after it succeeded: refused, nothing submitted.
    assert main(["nightly", DEMO, "--date", date, *sets]) == 0
    assert f"already succeeded: nothing submitted ({sid})" in capsys.readouterr().out

    night_jobs = [j for j in jobs.list_jobs(jobs.connect())
                  if (j.submission_id or "").startswith(sid)]
    assert [j.submission_id for j in night_jobs] == [sid]
    # The job itself also refuses a finished night (e.g. a second RayCronJob trigger).
    again = run_nightly(load_config(DEMO, tiny_overrides(jobs_data, name, knn=True)), date)
    assert again["state"] == "already-done"

    from pipeline.tracking import client_for

    client = client_for(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(plan.experiment_name(name))
    (run,) = client.search_runs([exp.experiment_id])
    tags = run.data.tags
    assert run.info.run_name == date and tags[plan.TAG_DATE] == date
    assert tags[plan.TAG_STATE] == "done" and tags[plan.TAG_DECISION] == "promoted"
    assert tags["ray.submission_id"] == sid and tags[plan.TAG_NEW] == "8"
    assert 0.0 < run.data.metrics["nightly_knn_top1"] <= 1.0
    champion = client.get_model_version_by_alias(f"{name}-encoder", "champion")
    assert champion.version == tags["mocopipe.registered_version"]
