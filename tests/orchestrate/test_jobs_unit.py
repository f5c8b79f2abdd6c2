"""Pure parts of job submission: entrypoint, runtime_env, token lookup, nightly dedup plan."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pipeline.envvars import SECRET_ENV, SETTINGS_ENV, forwarded_names
from pipeline.orchestrate import submit as jobs
from pipeline.orchestrate.nightly import plan_submission

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "jobs" / "configs" / "demo.toml")


def test_entrypoint_is_quoted_and_reads_the_staged_config() -> None:
    spec = jobs.JobSpec(module="jobs.pretrain", config=DEMO,
                        overrides=['data.train="s3://corpus/a b"', "train.max_steps=5"])
    cmd = jobs.build_entrypoint(spec)
    assert shlex.split(cmd) == ["python", "-m", "jobs.pretrain", "--config", jobs.CONFIG_FILE,
                                "--set", 'data.train="s3://corpus/a b"', "--set", "train.max_steps=5"]


@pytest.mark.parametrize("config", ["demo", DEMO])
def test_config_from_a_name_or_any_path_is_staged_verbatim(tmp_path, config) -> None:
    spec = jobs.JobSpec(module="jobs.pretrain", config=config)
    assert jobs.stage_config(spec, tmp_path) == "demo"
    assert (tmp_path / jobs.CONFIG_FILE).read_text() == Path(DEMO).read_text()
    outside = tmp_path / "elsewhere" / "mine.toml"
    outside.parent.mkdir()
    outside.write_text('[train]\nname = "mine"\n')
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    assert jobs.stage_config(jobs.JobSpec(module="m", config=str(outside)), job_dir) == "mine"
    assert (job_dir / jobs.CONFIG_FILE).read_text() == outside.read_text()


def test_runtime_env_forwards_settings_never_secrets_by_default(tmp_path, monkeypatch) -> None:
    secrets = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_ACCESS_KEY_ID": "AKIA-id-value",
               "AWS_SESSION_TOKEN": "session-value", "MLFLOW_TRACKING_PASSWORD": "pw-value",
               "MLFLOW_TRACKING_TOKEN": "tok-value", "RAY_AUTH_TOKEN": "ray-token-value"}
    from pipeline.envvars import SETTINGS_ENV

    for key in SETTINGS_ENV:  # only what this test sets (a session stack exports some)
        monkeypatch.delenv(key, raising=False)
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    env = jobs.build_runtime_env(tmp_path, sha="abc123")
    assert env["working_dir"] == str(tmp_path)
    assert env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                               "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
                               "MOCOPIPE_GIT_SHA": "abc123"}
    assert not set(secrets.values()) & set(env["env_vars"].values())
    # From a checkout the code travels as py_modules, without caches.
    assert env["py_modules"] == [str(ROOT / "pipeline"), str(ROOT / "jobs")]
    assert "__pycache__/" in env["excludes"]
    shown = jobs.describe_runtime_env(env)
    assert "MLFLOW_TRACKING_URI" in shown and "http://127.0.0.1:5000" not in shown
    assert jobs.build_runtime_env(tmp_path, env_names=(), sha="x")["env_vars"] == {
        "MOCOPIPE_GIT_SHA": "x"}


def test_forward_secrets_is_explicit_and_warns(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-token-value")
    names = forwarded_names(secrets=True)
    with caplog.at_level("WARNING", logger="pipeline.envvars"):
        env = jobs.build_runtime_env(tmp_path, env_names=names, sha="x")
    assert env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value"
    assert "RAY_AUTH_TOKEN" not in env["env_vars"]  # never, even on request
    assert "AWS_SECRET_ACCESS_KEY" in caplog.text and "s3cr3t-value" not in caplog.text
    assert set(forwarded_names()) == set(SETTINGS_ENV)
    assert not set(SETTINGS_ENV) & set(SECRET_ENV)


def test_installed_package_ships_no_code(tmp_path) -> None:
    env = jobs.build_runtime_env(tmp_path, root=tmp_path / "site-packages", env_names=(),
                                 sha="x")
    assert "py_modules" not in env and env["working_dir"] == str(tmp_path)


def test_one_list_of_secret_names_for_the_project() -> None:
    from pipeline import tracking
    from pipeline.train import ray_trainer

    assert tracking.SECRET_ENV_VARS is SECRET_ENV
    assert not hasattr(ray_trainer, "WORKER_ENV")
    assert jobs.FORWARDED_ENV == SETTINGS_ENV


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
