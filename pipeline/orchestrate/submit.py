"""Ray Jobs: submit the project to a Ray cluster, list, tail and stop its jobs.

A job ships this project as its `working_dir` (without .venv, state, data, git or the
git-ignored `infra/.env`) and runs `python -m jobs.<module> --config <path inside the
project> [--set ...]`. Storage and MLflow settings travel as runtime_env `env_vars`, copied
BY NAME from the submitter's environment (`FORWARDED_ENV`): their values are never printed
or logged here (`describe_runtime_env` shows names only).

Ray 2.60 token auth: the dashboard answers 401 without `authorization: Bearer <token>`.
The token comes from RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, the local
stack's token (`mocopipe up` state dir), or Ray's default `~/.ray/auth_token`, in that order.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from pipeline.tracking import git_sha

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# gitignore-style patterns relative to the project root (Ray's runtime_env `excludes`).
PROJECT_EXCLUDES = [
    "/.venv/", "/.mocopipe/", "/data/", "/.git/", "/out/", "/build/", "/dist/",
    "/test-output/", "/.pytest_cache/", "__pycache__/", "*.pyc", "*.egg-info/",
    "/infra/.env",
]

# Settings a job needs from the submitter's environment, forwarded by name when set.
FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_S3_ENDPOINT_URL",
)

EXIT_CODES = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.STOPPED: 3}


class JobsError(RuntimeError):
    """A Ray Jobs request failed; the message names the address or job and the cause."""


@dataclass
class JobSpec:
    """What a job runs: `python -m <module> --config <config> [--set o]... [extra_args]`."""

    module: str  # e.g. "jobs.pretrain"
    config: str  # path to the TOML config; must lie inside the project (it is shipped)
    overrides: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    python: str = "python"


# ----------------------------------------------------------------------------- project facts


def config_relpath(config: str, root: Path = PROJECT_ROOT) -> str:
    """The config's path relative to the project root, as the job will see it."""
    path = Path(config).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise JobsError(f"config {config!r} lies outside the project {root}; a job only "
                        "sees the shipped project, so put the config under jobs/configs/") from None


def build_entrypoint(spec: JobSpec, root: Path = PROJECT_ROOT) -> str:
    """The shell command Ray runs in the shipped working_dir (every part shell-quoted)."""
    argv = [spec.python, "-m", spec.module, "--config", config_relpath(spec.config, root)]
    for item in spec.overrides:
        argv += ["--set", item]
    argv += spec.extra_args
    return shlex.join(argv)


def build_runtime_env(*, root: Path = PROJECT_ROOT, env_names: Sequence[str] = FORWARDED_ENV,
                      sha: str | None = None) -> dict[str, Any]:
    """working_dir = the project minus PROJECT_EXCLUDES; env_vars = the named variables that
    are set here (values copied, never shown), plus MOCOPIPE_GIT_SHA."""
    env = {name: os.environ[name] for name in env_names if os.environ.get(name)}
    env["MOCOPIPE_GIT_SHA"] = sha or git_sha(root)
    return {"working_dir": str(root), "excludes": list(PROJECT_EXCLUDES), "env_vars": env}


def describe_runtime_env(runtime_env: dict[str, Any]) -> str:
    """A printable summary: the env var NAMES only, never their values."""
    names = ", ".join(sorted(runtime_env.get("env_vars", {}))) or "none"
    return f"working_dir={runtime_env.get('working_dir')} env_vars=[{names}]"


# ----------------------------------------------------------------------------- auth + client


def _stack_token() -> str | None:
    """The Ray token of the local stack in MOCOPIPE_STATE_DIR (default ./.mocopipe), if any."""
    state_dir = os.environ.get("MOCOPIPE_STATE_DIR", ".mocopipe")
    if not (Path(state_dir) / "stack.json").is_file():
        return None
    try:
        from pipeline.stack import local as stack

        return stack.info(state_dir).ray_token or None
    except Exception:  # noqa: BLE001 - an unreadable stack state just means "no token here"
        return None


def resolve_auth_token() -> tuple[str | None, str]:
    """(token, where it came from). Order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, local stack,
    ~/.ray/auth_token. (None, "") when there is none: the cluster may not need one."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_path:
        path = Path(token_path).expanduser()
        if not path.is_file():
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={token_path!r} is not a readable file")
        return path.read_text().strip(), f"RAY_AUTH_TOKEN_PATH ({path})"
    token = _stack_token()
    if token:
        return token, "the local stack (mocopipe up)"
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and default.read_text().strip():
        return default.read_text().strip(), str(default)
    return None, ""


@contextmanager
def _address_override(address: str | None) -> Iterator[None]:
    """Ray lets RAY_ADDRESS beat the address argument; an explicit --address must win."""
    key = "RAY_API_SERVER_ADDRESS"
    old = os.environ.get(key)
    if address:
        os.environ[key] = address
    try:
        yield
    finally:
        if address:
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def connect(address: str | None = None) -> JobSubmissionClient:
    """A JobSubmissionClient for `address` (dashboard URL, or a Ray address; None ->
    RAY_API_SERVER_ADDRESS / RAY_ADDRESS), sending the auth token when there is one."""
    token, _source = resolve_auth_token()
    # Always our own header: Ray would otherwise add a token it cached earlier in this process.
    headers = {"authorization": f"Bearer {token}" if token else ""}
    shown = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    try:
        with _address_override(address):
            return JobSubmissionClient(headers=headers)
    except AuthenticationError as exc:
        raise auth_error(shown, token is not None) from exc
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise JobsError(f"cannot reach the Ray job server at {shown or '(auto-detect)'}: "
                        f"{exc}; set RAY_ADDRESS or pass --address http://HEAD:8265") from None


def auth_error(address: str | None, had_token: bool) -> JobsError:
    """The clear message for a 401/403 from the dashboard."""
    if had_token:
        return JobsError(f"Ray at {address} rejected the auth token (wrong token for this "
                         "cluster); check RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH")
    return JobsError(f"Ray at {address} requires token authentication and no token was "
                     "found: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a token file); for "
                     "the local stack run `eval \"$(mocopipe env)\"`")


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one client request, turning Ray's errors into JobsError naming `what`."""
    try:
        return fn(*args, **kwargs)
    except AuthenticationError as exc:
        raise JobsError(f"{what}: {exc.message}") from None
    except RuntimeError as exc:
        raise JobsError(f"{what}: {exc}") from None


# ----------------------------------------------------------------------------- operations


def submit(client: JobSubmissionClient, spec: JobSpec, *, submission_id: str | None = None,
           metadata: dict[str, str] | None = None, root: Path = PROJECT_ROOT,
           env_names: Sequence[str] = FORWARDED_ENV) -> str:
    """Submit `spec`; returns the submission id. Metadata always carries the config name
    (the config file's stem) and the git sha."""
    sha = git_sha(root)
    meta = {"mocopipe.config": Path(spec.config).stem, "mocopipe.git_sha": sha,
            "mocopipe.module": spec.module, **(metadata or {})}
    return _call(f"submitting {spec.module}", client.submit_job,
                 entrypoint=build_entrypoint(spec, root), submission_id=submission_id,
                 runtime_env=build_runtime_env(root=root, env_names=env_names, sha=sha),
                 metadata={k: str(v) for k, v in meta.items()})


def job_info(client: JobSubmissionClient, submission_id: str) -> JobDetails | None:
    """The job's details, or None when the cluster has no job with that id."""
    try:
        return client.get_job_info(submission_id)
    except AuthenticationError as exc:
        raise JobsError(f"job {submission_id}: {exc.message}") from None
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            return None
        raise JobsError(f"job {submission_id}: {exc}") from None


def list_jobs(client: JobSubmissionClient) -> list[JobDetails]:
    """All jobs on the cluster, newest first."""
    jobs = _call("listing jobs", client.list_jobs)
    return sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)


def format_jobs(jobs: Sequence[JobDetails]) -> str:
    """One line per job: id, status, config, start time, entrypoint (never runtime_env)."""
    rows = [("SUBMISSION ID", "STATUS", "CONFIG", "STARTED (UTC)", "ENTRYPOINT")]
    for j in jobs:
        started = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(j.start_time / 1000))
                   if j.start_time else "-")
        rows.append((j.submission_id or j.job_id or "-", str(j.status),
                     (j.metadata or {}).get("mocopipe.config", "-"), started, j.entrypoint))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
                     for r in rows)


def logs(client: JobSubmissionClient, submission_id: str) -> str:
    """Everything the job printed so far."""
    return _call(f"logs of job {submission_id}", client.get_job_logs, submission_id)


def stop(client: JobSubmissionClient, submission_id: str) -> bool:
    """Ask the job to stop; True if it was running."""
    return _call(f"stopping job {submission_id}", client.stop_job, submission_id)


@dataclass
class WaitResult:
    """How a waited-for job ended, and when its first training step showed in its logs."""

    status: JobStatus
    first_step_at: float | None  # time.time() of the first log chunk containing STEP_MARKER


STEP_MARKER = "[mocopipe] step "  # what rank 0 prints every train.log_every steps


def wait(client: JobSubmissionClient, submission_id: str, *, stream: bool = True,
         out: TextIO | None = None, poll_s: float = 1.0) -> WaitResult:
    """Stream the job's logs to `out` (default: the current sys.stdout) until it ends;
    `stream=False` only polls the status."""
    first_step: list[float] = []
    if stream:
        sink: TextIO = out or sys.stdout

        async def _tail() -> None:
            async for chunk in client.tail_job_logs(submission_id):
                if not first_step and STEP_MARKER in chunk:
                    first_step.append(time.time())
                sink.write(chunk)
                sink.flush()

        try:
            asyncio.run(_tail())
        except AuthenticationError as exc:
            raise JobsError(f"logs of job {submission_id}: {exc.message}") from None
        except RuntimeError:
            pass  # the log socket closed early; fall through to polling the status
    while True:
        status = _call(f"status of job {submission_id}", client.get_job_status, submission_id)
        if status.is_terminal():
            return WaitResult(status, first_step[0] if first_step else None)
        time.sleep(poll_s)


def exit_code(status: JobStatus) -> int:
    """0 for SUCCEEDED, 1 for FAILED, 3 for STOPPED (the CLI's exit status)."""
    return EXIT_CODES.get(status, 1)
