"""The local stack on loopback: SeaweedFS (S3), an MLflow server and a Ray head node.

`up(state_dir)` starts the three servers (or reuses a healthy running stack), waits for
their health checks and writes `STATE_DIR/stack.json` (endpoints, ports, PIDs, buckets).
Credentials (S3 keys, Ray auth token) are generated once into `STATE_DIR/credentials.json`
(mode 0600) and reach the servers only through their environment. `down(state_dir)` stops
exactly the processes it started, by PID; `stack_env(state_dir)` gives the environment a
client needs (what `mocopipe env` prints).

Layout of the state dir: `s3/` (SeaweedFS data), `mlflow.db`, `logs/{s3,mlflow,ray}.log`,
`ray/` (Ray's temp dir, when the path is short enough for its unix sockets; otherwise a
short `/tmp/mocopipe-ray-XXXXXXXX` recorded in stack.json).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.stack.procs import (LOOPBACK, ProcRef, StackError, find_by_marker, spawn, stop, tree,
                            wait_until)
from pipeline.stack.launch import (RayStarter, choose_ports, mlflow_cmd, ray_cmd, ray_temp_dir,
                                   server_env, weed_cmd)
from pipeline.stack.nodes import add_reader_node, head_resources, node_markers, purge_node_dirs

__all__ = ["StackError", "StackState", "StackInfo", "up", "down", "health", "load_state",
           "stack_env", "info", "DEFAULT_STATE_DIR", "BUCKETS"]

DEFAULT_STATE_DIR = ".mocopipe"
BUCKETS = ("corpus", "mlflow")
REGION = "us-east-1"


@dataclass
class Credentials:
    access_key: str
    secret_key: str
    ray_token: str

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Credentials:
        path = state_dir / "credentials.json"
        if path.exists():
            return cls(**json.loads(path.read_text()))
        creds = cls(access_key="MOCO" + secrets.token_hex(8).upper(),
                    secret_key=secrets.token_hex(20), ray_token=secrets.token_hex(32))
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(creds), f, indent=2)
        os.chmod(path, 0o600)
        return creds


@dataclass
class StackState:
    """Contents of stack.json: where the stack listens and which processes are ours."""

    state_dir: str
    ports: dict[str, int]
    ray_temp_dir: str
    procs: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    buckets: list[str] = field(default_factory=lambda: list(BUCKETS))
    running: bool = False
    started_at: str = ""
    startup_s: float = 0.0
    reader_nodes: list[dict[str, Any]] = field(default_factory=list)  # see stack/nodes.py

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['mlflow']}"

    @property
    def ray_address(self) -> str:
        """GCS address, for `ray.init(address=...)` / RAY_ADDRESS."""
        return f"{LOOPBACK}:{self.ports['ray_gcs']}"

    @property
    def ray_dashboard(self) -> str:
        """Dashboard URL, for the Jobs API (`ray job submit --address`)."""
        return f"http://{LOOPBACK}:{self.ports['ray_dashboard']}"

    def refs(self, service: str | None = None) -> list[ProcRef]:
        names = [service] if service else list(self.procs)
        return [ProcRef.from_dict(d) for n in names for d in self.procs.get(n, [])]

    def save(self) -> None:
        path = Path(self.state_dir) / "stack.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)


@dataclass
class StackInfo:
    """What a client (or the test fixture) needs to reach a running stack."""

    state_dir: str
    s3_endpoint: str
    access_key: str
    secret_key: str
    mlflow_uri: str
    ray_address: str
    ray_dashboard: str
    ray_token: str
    env: dict[str, str]


def load_state(state_dir: str | Path) -> StackState | None:
    """The stack.json of `state_dir`, None if there is none; StackError (one line naming the
    file) if it is unreadable, not JSON, or not the shape `up` writes."""
    path = Path(state_dir) / "stack.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        state = StackState(**raw)
        bad = [k for k in ("s3", "mlflow", "ray_gcs", "ray_dashboard")
               if not isinstance(state.ports.get(k), int)]
        if bad or not isinstance(state.procs, dict):
            raise TypeError(f"ports {bad} missing or not integers" if bad else "procs not a map")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StackError(f"{path}: corrupt stack state ({type(exc).__name__}: {reason}); stop "
                         "any stack processes still running by hand, then delete the file") from exc
    return state


def _env_for(state: StackState, creds: Credentials) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_ENDPOINT_URL": state.s3_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_TRACKING_URI": state.mlflow_uri,
        "MLFLOW_S3_ENDPOINT_URL": state.s3_endpoint,
        "RAY_ADDRESS": state.ray_address,
        "RAY_API_SERVER_ADDRESS": state.ray_dashboard,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": creds.ray_token,
    }


def stack_env(state_dir: str | Path = DEFAULT_STATE_DIR) -> dict[str, str]:
    """The environment variables that point boto3, MLflow and Ray at the stack."""
    state = load_state(state_dir)
    if state is None:
        raise StackError(f"no stack in {state_dir} (no stack.json); run `mocopipe up` first")
    return _env_for(state, Credentials.load_or_create(Path(state_dir)))


def info(state_dir: str | Path = DEFAULT_STATE_DIR) -> StackInfo:
    state = load_state(state_dir)
    if state is None:
        raise StackError(f"no stack in {state_dir} (no stack.json); run `mocopipe up` first")
    creds = Credentials.load_or_create(Path(state_dir))
    return StackInfo(state_dir=str(state_dir), s3_endpoint=state.s3_endpoint,
                     access_key=creds.access_key, secret_key=creds.secret_key,
                     mlflow_uri=state.mlflow_uri, ray_address=state.ray_address,
                     ray_dashboard=state.ray_dashboard, ray_token=creds.ray_token,
                     env=_env_for(state, creds))


# ----------------------------------------------------------------------------- health


def _s3_client(state: StackState, creds: Credentials):  # noqa: ANN202 - boto3 client
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", endpoint_url=state.s3_endpoint, region_name=REGION,
                        aws_access_key_id=creds.access_key,
                        aws_secret_access_key=creds.secret_key,
                        config=BotoConfig(connect_timeout=2, read_timeout=5,
                                          retries={"max_attempts": 1}))


def _http_ok(url: str, token: str | None = None) -> bool:
    import urllib.request

    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=3) as resp:  # noqa: S310 - loopback http
        return resp.status == 200


def _check_s3(state: StackState, creds: Credentials) -> bool:
    _s3_client(state, creds).list_buckets()
    return True


def _check_mlflow(state: StackState, creds: Credentials) -> bool:
    return _http_ok(f"{state.mlflow_uri}/health")


def _http_json(url: str, token: str) -> Any:
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback http
        return json.loads(resp.read())


def _check_ray(state: StackState, creds: Credentials) -> bool:
    # The GCS answers, the Jobs API answers (both need the token), and the head's raylet
    # has registered as an ALIVE node.
    base, token = state.ray_dashboard, creds.ray_token
    if not (_http_ok(f"{base}/api/gcs_healthz", token) and _http_ok(f"{base}/api/jobs/", token)):
        return False
    nodes = _http_json(f"{base}/api/v0/nodes", token)["data"]["result"]["result"]
    return any(n.get("state") == "ALIVE" for n in nodes)


_CHECKS: dict[str, Callable[[StackState, Credentials], bool]] = {
    "s3": _check_s3, "mlflow": _check_mlflow, "ray": _check_ray}


def health(state_dir: str | Path = DEFAULT_STATE_DIR) -> dict[str, bool]:
    """{"s3": ok, "mlflow": ok, "ray": ok} for the stack in `state_dir` (all False if none)."""
    state = load_state(state_dir)
    if state is None or not state.running:
        return {name: False for name in _CHECKS}
    creds = Credentials.load_or_create(Path(state_dir))
    out = {}
    for name, check in _CHECKS.items():
        try:
            out[name] = bool(check(state, creds))
        except Exception:  # noqa: BLE001 - any failure means unhealthy
            out[name] = False
    return out


# ----------------------------------------------------------------------------- start


def _ensure_buckets(state: StackState, creds: Credentials) -> None:
    client = _s3_client(state, creds)
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in state.buckets:
        if bucket not in have:
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass  # `weed mini -bucket=...` created it in the meantime (jobs engineer)


def _record(state: StackState, service: str, refs: list[ProcRef]) -> None:
    state.procs[service] = [r.to_dict() for r in refs]
    state.save()


def up(state_dir: str | Path = DEFAULT_STATE_DIR, *, ports: dict[str, int] | None = None,
       timeout_s: float = 180.0, num_cpus: int = 8, object_store_mb: int = 1024,
       reader_nodes: int = 0, log: Callable[[str], None] = lambda msg: None) -> StackState:
    """Start the stack in `state_dir` (or reuse it when it is running and healthy).

    `reader_nodes`: more Ray nodes joined to the head, each offering the resource
    ``reader`` (see `pipeline.stack.nodes`); the head offers ``trainer``.

    On any failure everything this call started is stopped and StackError is raised with
    the tail of the failing server's log.
    """
    sdir = Path(state_dir).resolve()
    previous = load_state(sdir)
    if previous is not None and previous.running:
        same_ports = all(previous.ports.get(k) == v for k, v in (ports or {}).items())
        same_nodes = len(previous.reader_nodes) == reader_nodes
        if same_ports and same_nodes and all(health(sdir).values()):
            log(f"stack in {sdir} is already running and healthy; reusing it")
            return previous
        log(f"stack in {sdir} is not healthy; restarting it")
        down(sdir)
    t0 = time.monotonic()
    sdir.mkdir(parents=True, exist_ok=True)
    creds = Credentials.load_or_create(sdir)
    state = StackState(state_dir=str(sdir), ray_temp_dir=ray_temp_dir(sdir),
                       ports=choose_ports(previous.ports if previous else None, ports or {}),
                       started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    state.running = True
    state.save()
    env, logs = server_env(_env_for(state, creds)), sdir / "logs"
    ray_start: RayStarter | None = None
    try:
        weed = spawn(weed_cmd(state.ports, sdir, state.buckets), env=env, log_path=logs / "s3.log", cwd=sdir)
        _record(state, "s3", [ProcRef.of(weed.pid)])
        mlflow = spawn(mlflow_cmd(state.ports["mlflow"], sdir), env=env, log_path=logs / "mlflow.log", cwd=sdir)
        _record(state, "mlflow", [ProcRef.of(mlflow.pid)])
        ray_start = RayStarter(ray_cmd(state.ports, state.ray_temp_dir, num_cpus,
                                       object_store_mb, head_resources(num_cpus, reader_nodes)),
                               env, logs / "ray.log",
                               state.ray_temp_dir, state.ports["ray_agent_http"], timeout_s)
        ray_start.start()
        wait_until(lambda: _check_s3(state, creds), what=f"SeaweedFS S3 at {state.s3_endpoint}",
                   timeout_s=timeout_s, log_path=logs / "s3.log", proc=weed)
        _ensure_buckets(state, creds)
        log(f"s3      ready at {state.s3_endpoint} ({time.monotonic() - t0:.1f}s)")
        wait_until(lambda: _check_mlflow(state, creds), what=f"MLflow at {state.mlflow_uri}",
                   timeout_s=timeout_s, log_path=logs / "mlflow.log", proc=mlflow)
        _record(state, "mlflow", tree(state.refs("mlflow")))
        log(f"mlflow  ready at {state.mlflow_uri} ({time.monotonic() - t0:.1f}s)")
        ray_start.join(3 * timeout_s)
        _record(state, "ray", find_by_marker(state.ray_temp_dir))
        if ray_start.error is not None:
            raise ray_start.error
        wait_until(lambda: _check_ray(state, creds), what=f"Ray head at {state.ray_dashboard}",
                   timeout_s=timeout_s, log_path=logs / "ray.log")
        _record(state, "ray", find_by_marker(state.ray_temp_dir))
        log(f"ray     ready at {state.ray_address} ({time.monotonic() - t0:.1f}s)")
        for _ in range(reader_nodes):
            node = add_reader_node(sdir, timeout_s=timeout_s)
            state = load_state(sdir) or state
            log(f"ray     reader node {node['name']} joined ({time.monotonic() - t0:.1f}s)")
    except BaseException:
        if ray_start is not None:
            ray_start.kill()  # before it can spawn more Ray daemons
        _stop_all(load_state(sdir) or state)  # with the nodes recorded since
        raise
    state.startup_s = round(time.monotonic() - t0, 2)
    state.save()
    return state


# ----------------------------------------------------------------------------- stop


def _stop_all(state: StackState) -> list[int]:
    """Stop every process of this stack: recorded PIDs, their children, and Ray's session."""
    # One SIGTERM to all, then SIGKILL after a short grace: MLflow's uvicorn waits for
    # idle keep-alive clients, and Ray's daemons hold disposable state (`ray stop --force`).
    refs = state.refs()
    for marker in [state.ray_temp_dir, *node_markers(state)]:
        if marker:
            refs += find_by_marker(marker)  # Ray workers started after `up`
    stopped = stop(tree(refs), timeout_s=5.0)
    state.running = False
    state.save()
    return stopped


def down(state_dir: str | Path = DEFAULT_STATE_DIR, *, purge: bool = False) -> list[int]:
    """Stop the stack's processes by PID (data stays unless `purge`). Returns PIDs stopped."""
    sdir = Path(state_dir).resolve()
    state = load_state(sdir)
    stopped = _stop_all(state) if state is not None else []
    if purge:
        if state is not None and state.ray_temp_dir.startswith("/tmp/mocopipe-ray-"):
            shutil.rmtree(state.ray_temp_dir, ignore_errors=True)
        if state is not None:
            purge_node_dirs(state)
        shutil.rmtree(sdir, ignore_errors=True)
    return stopped
