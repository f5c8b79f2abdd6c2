"""Ray Jobs: submit a config to a Ray cluster, list, tail and stop its jobs.

A job's `working_dir` is a fresh folder holding only the resolved config (`CONFIG_FILE`, the
TOML text of a path from anywhere or of a shipped config's name); the entrypoint is
`python -m jobs.<module> --config mocopipe-job.toml [--set ...]`. The code the job runs is
the mocopipe installed on the cluster (its image), or, when submitted from a source
checkout, that checkout's `pipeline/` and `jobs/` packages shipped as `py_modules`.

Environment: only the non-secret settings of `pipeline.envvars` (endpoints, region,
tracking URI) travel as runtime_env `env_vars`; credentials stay on the nodes unless the
submitter passes `--forward-secrets` (warned). `describe_runtime_env` shows names only.

Ray 2.60 token auth: the dashboard answers 401 without `authorization: Bearer <token>`.
The token comes from RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, the local
stack's token (`mocopipe up` state dir), or Ray's default `~/.ray/auth_token`, in that order.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from pipeline.config import config_source
from pipeline.tracking import git_sha
from pipeline.envvars import SETTINGS_ENV, forwarded_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # a checkout, or site-packages when installed
CONFIG_FILE = "mocopipe-job.toml"  # the resolved config, alone in the job's working_dir

# gitignore-style patterns for the shipped checkout packages (Ray's runtime_env `excludes`).
CODE_EXCLUDES = ["__pycache__/", "*.pyc", "*.egg-info/"]

# The settings a job gets from the submitter's environment (names; values never shown).
FORWARDED_ENV: tuple[str, ...] = SETTINGS_ENV

EXIT_CODES = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.STOPPED: 3}


class JobsError(RuntimeError):
    """A Ray Jobs request failed; the message names the address or job and the cause."""


@dataclass
class JobSpec:
    """What a job runs: `python -m <module> --config CONFIG_FILE [--set o]... [extra_args]`."""

    module: str  # e.g. "jobs.pretrain"
    config: str  # a TOML path (anywhere) or a shipped config's name ("demo")
    overrides: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    python: str = "python"


# ----------------------------------------------------------------------------- project facts


def is_checkout(root: Path = PROJECT_ROOT) -> bool:
    """True when `root` is a source checkout (pyproject.toml next to pipeline/ and jobs/)."""
    return all((root / part).exists() for part in ("pyproject.toml", "pipeline", "jobs"))



def build_entrypoint(spec: JobSpec) -> str:
    """The shell command Ray runs in the job's working_dir (every part shell-quoted)."""
    argv = [spec.python, "-m", spec.module, "--config", CONFIG_FILE]
    for item in spec.overrides:
        argv += ["--set", item]
    argv += spec.extra_args
    return shlex.join(argv)


def stage_config(spec: JobSpec, job_dir: Path) -> str:
    """Write the resolved config of `spec` into `job_dir/CONFIG_FILE`; return its name."""
    name, text = config_source(spec.config)
    (job_dir / CONFIG_FILE).write_text(text)
    return name


def build_runtime_env(job_dir: Path, *, root: Path = PROJECT_ROOT,
                      env_names: Sequence[str] = FORWARDED_ENV,
                      sha: str | None = None) -> dict[str, Any]:
    """working_dir = `job_dir` (the staged config); py_modules = the checkout's packages
    when `root` is a checkout; env_vars = the named variables set here (values copied,
    never shown; credentials only when named, with a warning) plus MOCOPIPE_GIT_SHA."""
    env = forwarded_env(env_names)
    env["MOCOPIPE_GIT_SHA"] = sha or git_sha(root)
    runtime_env: dict[str, Any] = {"working_dir": str(job_dir), "env_vars": env}
    if is_checkout(root):
        runtime_env["py_modules"] = [str(root / "pipeline"), str(root / "jobs")]
        runtime_env["excludes"] = list(CODE_EXCLUDES)
    return runtime_env


def describe_runtime_env(runtime_env: dict[str, Any]) -> str:
    """A printable summary: the env var NAMES only, never their values."""
    names = ", ".join(sorted(runtime_env.get("env_vars", {}))) or "none"
    code = ("py_modules=" + ",".join(runtime_env["py_modules"]) if "py_modules" in runtime_env
            else "code=the mocopipe installed on the cluster")
    return f"{code} env_vars=[{names}]"


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
    """Submit `spec` (its config staged into a temporary working_dir, uploaded by Ray);
    returns the submission id. Metadata always carries the config name and the git sha."""
    sha = git_sha(root)
    with tempfile.TemporaryDirectory(prefix="mocopipe-job-") as tmp:
        name = stage_config(spec, Path(tmp))
        meta = {"mocopipe.config": name, "mocopipe.git_sha": sha,
                "mocopipe.module": spec.module, **(metadata or {})}
        return _call(f"submitting {spec.module}", client.submit_job,
                     entrypoint=build_entrypoint(spec), submission_id=submission_id,
                     runtime_env=build_runtime_env(Path(tmp), root=root, env_names=env_names,
                                                   sha=sha),
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
