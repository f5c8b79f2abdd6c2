"""A private SeaweedFS (`weed mini`) that a fault test may kill and restart by PID.

Started with the same command line as the local stack (`pipeline.stack.launch.weed_cmd`), on
its own loopback ports and data dir; a restart reuses both, so the objects survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from pipeline.stack.procs import LOOPBACK, ProcRef, pick_ports, spawn, stop, wait_until
from pipeline.stack.launch import weed_cmd

_WEED_PORTS = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer",
               "filer_grpc", "admin", "admin_grpc")


class PrivateWeed:
    """One `weed mini` with bucket ``corpus`` (and any other `buckets`); credentials are fixed
    test values unless given (the soak test reuses the session stack's: Ray workers get their
    credentials from the stack's Ray head, never from the job)."""

    access_key = "INGESTTESTKEY"
    secret_key = "ingest-test-secret-0123456789"

    def __init__(self, state_dir: Path, *, buckets: tuple[str, ...] = (),
                 credentials: tuple[str, str] | None = None) -> None:
        self.buckets = ["corpus", *buckets]
        if credentials is not None:
            self.access_key, self.secret_key = credentials
        self.ports = dict(zip(_WEED_PORTS, pick_ports(len(_WEED_PORTS))))
        self.state_dir = state_dir
        self.log = state_dir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout_s: float = 90.0) -> None:
        env = {**os.environ, **self.env}
        self.proc = spawn(weed_cmd(self.ports, self.state_dir, self.buckets), env=env,
                          log_path=self.log, cwd=self.state_dir)
        wait_until(self._ready, what=f"private SeaweedFS at {self.endpoint}",
                   timeout_s=timeout_s, log_path=self.log, proc=self.proc)

    def _ready(self) -> bool:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key,
                              config=Config(connect_timeout=1, read_timeout=3,
                                            retries={"max_attempts": 1}))
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if "corpus" not in names:
            client.create_bucket(Bucket="corpus")
        client.put_object(Bucket="corpus", Key=".probe", Body=b"ok")
        return client.get_object(Bucket="corpus", Key=".probe")["Body"].read() == b"ok"

    def kill(self) -> None:
        """SIGKILL the server and its children (no clean shutdown), by PID."""
        if self.proc is None:
            return
        refs = [ProcRef.of(self.proc.pid)]
        try:
            import psutil

            refs += [ProcRef.of(c.pid) for c in psutil.Process(self.proc.pid).children(True)]
        except Exception:  # noqa: BLE001 - already gone
            pass
        for ref in refs:
            try:
                os.kill(ref.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop([ProcRef.of(self.proc.pid)])
            self.proc.wait(timeout=10)
            self.proc = None
