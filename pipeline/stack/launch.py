"""How the local stack's servers are launched: ports, command lines, environment.

`pipeline.stack.local` decides *when* (up/down, health, state); this module knows *how* each
server is started: SeaweedFS `weed mini`, `mlflow server`, and `ray start --head`, each
with every port it opens pinned to a free loopback port so that several stacks can run
side by side on one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from pipeline.stack.procs import (LOOPBACK, StackError, find_binary, find_by_marker, pick_ports,
                            port_free, require_free, spawn, stop, tail, tree)

MLFLOW_ARTIFACTS = "s3://mlflow/artifacts"
RAY_WORKER_PORTS = 200  # size of the worker port range pinned for Ray
_GRPC_OFFSET = 10000  # SeaweedFS's convention: gRPC port = HTTP port + 10000
_AGENT_PORT_FILE = "dashboard_agent_listen_port"  # Ray's DASHBOARD_AGENT_LISTEN_PORT_NAME
_SOCKET_DIR_MAX = 40  # Ray appends ~65 chars of session/socket names; AF_UNIX allows 107
# Named ports; Ray's worker range starts at "ray_worker_min" and spans RAY_WORKER_PORTS.
PORT_NAMES = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer",
              "filer_grpc", "admin", "admin_grpc", "mlflow", "ray_gcs", "ray_dashboard",
              "ray_client", "ray_node_manager", "ray_object_manager", "ray_agent_http",
              "ray_agent_grpc", "ray_runtime_env", "ray_metrics")


def ray_temp_dir(state_dir: Path, name: str = "ray") -> str:
    """A Ray node's temp dir: `STATE_DIR/NAME` when short enough for its unix sockets.

    The head's is "ray"; each joined node has its own ("node1", ...), which no other
    node's temp dir contains, so that each node's processes are found by their own marker.
    """
    local = state_dir / name
    if len(str(local)) <= _SOCKET_DIR_MAX:
        return str(local)
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:8]
    return f"/tmp/mocopipe-{name}-{digest}"


def choose_ports(previous: dict[str, int] | None, fixed: dict[str, int]) -> dict[str, int]:
    """Each port: user-fixed (must be free), else the previous run's if free, else a new one.

    Keeping the previous ports keeps a restarted stack's endpoints (and `mocopipe env`) stable.
    """
    for name, port in fixed.items():
        if name not in PORT_NAMES:
            raise StackError(f"unknown port name {name!r}; valid: {', '.join(PORT_NAMES)}")
        require_free(port, name)
    prev = previous or {}
    ports = dict(fixed)
    for name in PORT_NAMES:
        old = prev.get(name)
        if name not in ports and old is not None and old not in ports.values() \
                and port_free(old):
            ports[name] = old
    missing = [n for n in PORT_NAMES if n not in ports]
    ports.update(zip(missing, pick_ports(len(missing), avoid=ports.values())))
    # SeaweedFS's plugin worker dials the admin server at admin.port + 10000, whatever
    # -admin.port.grpc says: keep that pair aligned.
    if "admin" not in fixed:
        while ports["admin_grpc"] != ports["admin"] + _GRPC_OFFSET and not (
                ports["admin"] + _GRPC_OFFSET not in ports.values()
                and port_free(ports["admin"] + _GRPC_OFFSET)):
            (ports["admin"],) = pick_ports(1, avoid=ports.values())
    ports["admin_grpc"] = ports["admin"] + _GRPC_OFFSET
    require_free(ports["admin_grpc"], "admin_grpc (admin + 10000)")
    worker = prev.get("ray_worker_min")
    block = range(worker, worker + RAY_WORKER_PORTS) if worker else range(0)
    if not block or any(p in ports.values() or not port_free(p) for p in block):
        (worker,) = pick_ports(1, span=RAY_WORKER_PORTS, avoid=ports.values())
    ports["ray_worker_min"] = worker
    return ports


def weed_cmd(p: dict[str, int], state_dir: Path, buckets: list[str]) -> list[str]:
    """`weed mini` with every port pinned to loopback and the buckets pre-created."""
    data = state_dir / "s3"
    data.mkdir(parents=True, exist_ok=True)
    return [find_binary("weed"), "mini", f"-dir={data}", f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-bucket={','.join(buckets)}"]


def mlflow_cmd(port: int, state_dir: Path) -> list[str]:
    """`mlflow server`: SQLite backend in the state dir, artifacts proxied to S3."""
    db = state_dir.resolve() / "mlflow.db"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
            "--serve-artifacts", "--artifacts-destination", MLFLOW_ARTIFACTS,
            "--host", LOOPBACK, "--port", str(port), "--workers", "1",
            "--allowed-hosts", f"{LOOPBACK}:{port},localhost:{port},{LOOPBACK},localhost"]


# Ports of a node that joins the head (`ray start --address`); "worker_min" starts a range.
NODE_PORT_NAMES = ("node_manager", "object_manager", "agent_http", "agent_grpc",
                   "runtime_env", "metrics")


def _node_args(p: dict[str, int], temp_dir: str, num_cpus: int,
               object_store_mb: int) -> list[str]:
    """The `ray start` flags every node of the stack pins (head and joined nodes alike):
    `p` holds the ports named in NODE_PORT_NAMES plus "worker_min"."""
    return ["--node-manager-port", str(p["node_manager"]),
            "--object-manager-port", str(p["object_manager"]),
            "--dashboard-agent-listen-port", str(p["agent_http"]),
            "--dashboard-agent-grpc-port", str(p["agent_grpc"]),
            "--runtime-env-agent-port", str(p["runtime_env"]),
            "--metrics-export-port", str(p["metrics"]),
            "--min-worker-port", str(p["worker_min"]),
            "--max-worker-port", str(p["worker_min"] + RAY_WORKER_PORTS - 1),
            "--num-cpus", str(num_cpus), "--object-store-memory",
            str(object_store_mb * 2**20), "--temp-dir", temp_dir, "--disable-usage-stats"]


def ray_cmd(p: dict[str, int], temp_dir: str, num_cpus: int, object_store_mb: int,
            resources: dict[str, float] | None = None) -> list[str]:
    """`ray start --head` with every port pinned (workers get a fixed range).

    `resources`: custom resources the head offers (e.g. ``{"trainer": 8}``).
    """
    extra = ["--resources", json.dumps(resources)] if resources else []
    return [find_binary("ray"), "start", "--head", "--node-ip-address", LOOPBACK,
            "--port", str(p["ray_gcs"]), "--dashboard-host", LOOPBACK,
            "--dashboard-port", str(p["ray_dashboard"]), "--include-dashboard", "true",
            "--ray-client-server-port", str(p["ray_client"]),
            *_node_args({k[len("ray_"):]: v for k, v in p.items() if k.startswith("ray_")},
                        temp_dir, num_cpus, object_store_mb), *extra]




def ray_node_cmd(address: str, p: dict[str, int], temp_dir: str, num_cpus: int,
                 object_store_mb: int, resources: dict[str, float]) -> list[str]:
    """`ray start --address HEAD` for one more node on loopback, every port pinned.

    The node authenticates with the head's token, which it finds in its environment
    (RAY_AUTH_MODE / RAY_AUTH_TOKEN, see `server_env`), never on its command line.
    """
    return [find_binary("ray"), "start", "--address", address,
            "--node-ip-address", LOOPBACK, *_node_args(p, temp_dir, num_cpus, object_store_mb),
            "--resources", json.dumps(resources)]


def server_env(client_env: dict[str, str]) -> dict[str, str]:
    """The servers' environment: ours plus the client variables (Ray workers inherit it)."""
    env = {**os.environ, **client_env}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    # MLflow's background job runner (3 huey consumer processes) serves no purpose here.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # Ray job entrypoints say `python -m jobs...`: make that the stack's interpreter, as the
    # image's venv is on PATH on a real cluster (jobs engineer).
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


class RayStarter(threading.Thread):
    """Runs `ray start --head` (which daemonizes) in the background; `error` after join.

    `ray start` has start-up deadlines that a busy machine misses, and it does not retry:

    - its raylet waits only ~15 s (fixed in Ray 2.60; `RAY_agent_register_timeout_ms` does
      not change it) for the dashboard agent to write `dashboard_agent_listen_port_<node>`
      into the session dir, and aborts otherwise. The agent writes it only after importing
      all its modules, which takes longer than that when the CPUs are shared. The raylet
      learns every other agent port from its command line; this one it must read from the
      file. Since we pinned that port, we write the same file (with Ray's own
      `persist_port`) as soon as the raylet exists; the agent rewrites it identically.
    - it gives the raylet a fixed 30 s to register with the GCS. If the raylet is alive the
      health check simply waits for it; if it died, that attempt's processes are stopped
      and `ray start` runs again.
    """

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, marker: str,
                 agent_port: int, timeout_s: float, attempts: int = 3):
        super().__init__(daemon=True)
        self.cmd, self.env, self.log, self.marker = cmd, env, log, marker
        self.agent_port, self.timeout_s, self.attempts = agent_port, timeout_s, attempts
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: BaseException | None = None
        self.cancelled = False

    def run(self) -> None:
        try:
            for attempt in range(1, self.attempts + 1):
                self.proc = spawn(self.cmd, env=self.env, log_path=self.log)
                code = self._wait_helping_raylet(self.proc)
                if code == 0 or self.cancelled:
                    return
                raylet_alive = any(r.name == "raylet" for r in find_by_marker(self.marker))
                if raylet_alive and "timed out during startup" in tail(self.log, 3):
                    return  # registers late; the health check waits for it
                stop(tree(find_by_marker(self.marker)), timeout_s=3.0)
                if attempt == self.attempts:
                    raise StackError(f"`ray start` failed {attempt} times (code {code}); "
                                     f"last lines of {self.log}:\n{tail(self.log)}")
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            self.error = exc

    def _wait_helping_raylet(self, proc: subprocess.Popen[bytes]) -> int:
        deadline = time.monotonic() + self.timeout_s
        written = False
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                return proc.wait()
            if not written:
                written = self._write_agent_port_file()
            time.sleep(0.3)
        return proc.returncode

    def _write_agent_port_file(self) -> bool:
        """Write the raylet's awaited agent-port file once the raylet is running."""
        for ref in find_by_marker(self.marker):
            proc = ref.process()
            if ref.name != "raylet" or proc is None:
                continue
            try:
                opts = dict(a[2:].split("=", 1) for a in proc.cmdline()
                            if a.startswith("--") and "=" in a)
            except psutil.Error:
                return False
            node_id, session_dir = opts.get("node_id"), opts.get("session_dir")
            if not node_id or not session_dir:
                return False
            from ray._raylet import persist_port  # heavy import, only when Ray is started

            if not (Path(session_dir) / f"{_AGENT_PORT_FILE}_{node_id}").exists():
                persist_port(session_dir, node_id, _AGENT_PORT_FILE, self.agent_port)
            return True
        return False

    def kill(self) -> None:
        self.cancelled = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
