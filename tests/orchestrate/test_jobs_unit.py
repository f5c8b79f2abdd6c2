"""Pure parts of job submission: entrypoint, runtime_env, token lookup, nightly dedup plan."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pipeline.orchestrate import submit as jobs
from pipeline.orchestrate.nightly import plan_submission

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "jobs" / "configs" / "demo.toml")


def test_entrypoint_is_quoted_and_relative_to_the_project() -> None:
    spec = jobs.JobSpec(module="jobs.pretrain", config=DEMO,
                        overrides=['data.train="s3://corpus/a b"', "train.max_steps=5"])
    cmd = jobs.build_entrypoint(spec)
    assert shlex.split(cmd) == ["python", "-m", "jobs.pretrain", "--config", "jobs/configs/demo.toml",
                                "--set", 'data.train="s3://corpus/a b"', "--set", "train.max_steps=5"]


def test_runtime_env_forwards_values_by_name_and_never_shows_them(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    env = jobs.build_runtime_env(sha="abc123")
    assert env["working_dir"] == str(ROOT)
    assert env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value"
    assert "AWS_SESSION_TOKEN" not in env["env_vars"]  # unset names are not sent
    assert env["env_vars"]["MOCOPIPE_GIT_SHA"] == "abc123"
    for pattern in ("/.venv/", "/.mocopipe/", "/data/", "/.git/", "/infra/.env"):
        assert pattern in env["excludes"]
    shown = jobs.describe_runtime_env(env)
    assert "s3cr3t-value" not in shown and "AWS_SECRET_ACCESS_KEY" in shown
    assert jobs.build_runtime_env(env_names=(), sha="x")["env_vars"] == {"MOCOPIPE_GIT_SHA": "x"}


def test_token_lookup_order(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MOCOPIPE_STATE_DIR", str(tmp_path / "no-stack"))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    assert jobs.resolve_auth_token() == (None, "")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-default-file\n")
    assert jobs.resolve_auth_token()[0] == "from-default-file"
    path = tmp_path / "tok"
    path.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert jobs.resolve_auth_token() == ("from-path", f"RAY_AUTH_TOKEN_PATH ({path})")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.resolve_auth_token() == ("from-env", "RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(jobs.JobsError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.resolve_auth_token()


def test_unreachable_cluster_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(jobs.JobsError, match="cannot reach the Ray job server at http://127.0.0.1:9"):
        jobs.connect("http://127.0.0.1:9")


@pytest.mark.parametrize("existing,expected", [
    ({}, ("submit", "nightly-demo-2026-11-27")),
    ({"nightly-demo-2026-11-27": "PENDING"}, ("join", "nightly-demo-2026-11-27")),
    ({"nightly-demo-2026-11-27": "RUNNING"}, ("join", "nightly-demo-2026-11-27")),
    ({"nightly-demo-2026-11-27": "SUCCEEDED"}, ("done", "nightly-demo-2026-11-27")),
    ({"nightly-demo-2026-11-27": "FAILED"}, ("submit", "nightly-demo-2026-11-27-attempt2")),
    ({"nightly-demo-2026-11-27": "STOPPED", "nightly-demo-2026-11-27-attempt2": "RUNNING"},
     ("join", "nightly-demo-2026-11-27-attempt2")),
    ({"nightly-demo-2026-11-27": "FAILED", "nightly-demo-2026-11-27-attempt2": "FAILED"},
     ("submit", "nightly-demo-2026-11-27-attempt3")),
    ({"nightly-demo-2026-11-27": "FAILED", "nightly-demo-2026-11-27-attempt2": "SUCCEEDED"},
     ("done", "nightly-demo-2026-11-27-attempt2")),
])
def test_nightly_submission_plan(existing: dict[str, str], expected: tuple[str, str]) -> None:
    assert plan_submission("demo", "2026-11-27", existing) == expected


def test_exit_codes() -> None:
    from ray.job_submission import JobStatus

    assert [jobs.exit_code(s) for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)] \
        == [0, 1, 3]
