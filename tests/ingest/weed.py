"""A private SeaweedFS (`weed mini`) that a fault test may kill and restart by PID.

Started with the same command line as the local stack (`pipeline.stack.launch.weed_cmd`), on
its own loopback ports and data dir; a restart reuses both, so the objects survive.

With `identities`, the server takes an S3 config file (`-s3.config`) listing the admin key
(`access_key`, every action) and the given identities, each
``{"name", "credentials": [{"accessKey", "secretKey"}], "actions": [...]}`` where an action
is ``Read``/``List``/``Write``/``Tagging``/``Admin``, optionally for one bucket
(``"Read:corpus"``); a request outside its actions gets AccessDenied.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.stack.launch import weed_cmd
from pipeline.stack.procs import LOOPBACK, ProcRef, pick_ports, spawn, stop, wait_until

_WEED_PORTS = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer",
               "filer_grpc", "admin", "admin_grpc")


class PrivateWeed:
    """One `weed mini` with bucket ``corpus`` (and `buckets`); the admin credentials are fixed
    test values unless given (the soak test reuses the session stack's: Ray workers get their
    credentials from the stack's Ray head, never from the job); `identities` adds keys with
    restricted actions (see the module doc)."""

    access_key = "INGESTTESTKEY"
    secret_key = "ingest-test-secret-0123456789"

    def __init__(self, state_dir: Path, *, identities: Sequence[dict[str, Any]] = (),
                 buckets: Sequence[str] = ("corpus",),
                 credentials: tuple[str, str] | None = None) -> None:
        if credentials is not None:
            self.access_key, self.secret_key = credentials
        self.ports = dict(zip(_WEED_PORTS, pick_ports(len(_WEED_PORTS))))
        self.state_dir = state_dir
        self.log = state_dir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.buckets = list(dict.fromkeys(["corpus", *buckets]))
        self.s3_config: Path | None = None
        if identities:
            admin = {"name": "admin", "credentials": [{"accessKey": self.access_key,
                                                       "secretKey": self.secret_key}],
                     "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
            self.s3_config = state_dir / "s3.json"
            self.s3_config.write_text(json.dumps({"identities": [admin, *identities]}))

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout_s: float = 90.0) -> None:
        env = {**os.environ, **self.env}
        cmd = weed_cmd(self.ports, self.state_dir, self.buckets)
        if self.s3_config is not None:
            cmd.append(f"-s3.config={self.s3_config}")
        self.proc = spawn(cmd, env=env, log_path=self.log, cwd=self.state_dir)
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
        for bucket in self.buckets:
            if bucket not in names:
                client.create_bucket(Bucket=bucket)
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
