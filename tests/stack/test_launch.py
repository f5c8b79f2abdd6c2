"""Unit tests of the stack's launch helpers: port choice, command lines, process refs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.stack.procs import ProcRef, StackError, port_free, stop
from pipeline.stack.launch import (PORT_NAMES, RAY_WORKER_PORTS, choose_ports, ray_cmd,
                                   ray_temp_dir, weed_cmd)

pytestmark = pytest.mark.unit


def _all_ports(ports: dict[str, int]) -> list[int]:
    named = [v for k, v in ports.items() if k != "ray_worker_min"]
    return named + list(range(ports["ray_worker_min"], ports["ray_worker_min"] + RAY_WORKER_PORTS))


def test_chosen_ports_are_distinct_free_and_keep_seaweeds_admin_pair() -> None:
    ports = choose_ports(None, {})
    assert set(ports) == set(PORT_NAMES) | {"ray_worker_min"}
    every = _all_ports(ports)
    assert len(set(every)) == len(every)
    assert all(port_free(p) for p in every)
    assert ports["admin_grpc"] == ports["admin"] + 10000


def test_previous_ports_are_kept_and_only_a_taken_one_moves() -> None:
    first = choose_ports(None, {})
    assert choose_ports(first, {}) == first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first["mlflow"]))
        taken.listen()
        again = choose_ports(first, {})
    assert again["mlflow"] != first["mlflow"]
    assert {k: v for k, v in again.items() if k != "mlflow"} == \
        {k: v for k, v in first.items() if k != "mlflow"}


def test_a_taken_fixed_port_names_the_service_and_the_owner() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port} for s3 .* already in use by pid "
                                             rf"{os.getpid()}"):
            choose_ports(None, {"s3": port})
    with pytest.raises(StackError, match="unknown port name 'webdav'"):
        choose_ports(None, {"webdav": 7333})


def test_ray_temp_dir_stays_short_enough_for_unix_sockets(tmp_path: Path) -> None:
    assert ray_temp_dir(Path("/tmp/s")) == "/tmp/s/ray"
    deep = tmp_path / ("x" * 60)
    short = ray_temp_dir(deep)
    assert short.startswith("/tmp/mocopipe-ray-") and len(short) < 40
    assert ray_temp_dir(deep) == short  # stable for the same state dir


def test_command_lines_pin_every_port_to_loopback(tmp_path: Path) -> None:
    ports = choose_ports(None, {})
    weed = " ".join(weed_cmd(ports, tmp_path, ["corpus", "mlflow"]))
    for name in ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer",
                 "filer_grpc", "admin", "admin_grpc"):
        assert f"={ports[name]}" in weed, name
    assert "-ip.bind=127.0.0.1" in weed and "-bucket=corpus,mlflow" in weed
    ray = ray_cmd(ports, "/tmp/r", 8, 256)
    for name in ("ray_gcs", "ray_dashboard", "ray_client", "ray_node_manager",
                 "ray_object_manager", "ray_agent_http", "ray_agent_grpc", "ray_runtime_env",
                 "ray_metrics", "ray_worker_min"):
        assert str(ports[name]) in ray, name
    assert ray[ray.index("--dashboard-host") + 1] == "127.0.0.1"


def test_proc_ref_ignores_recycled_pids_and_stop_reaps() -> None:
    me = ProcRef.of(os.getpid())
    assert me.alive()
    assert not ProcRef(me.pid, me.create_time - 1000.0, me.name).alive()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ref = ProcRef.of(child.pid)
    assert stop([ref], timeout_s=5.0) == [child.pid]
    assert not ref.alive() and child.poll() is not None


def test_reader_node_command_joins_the_head_with_pinned_ports_and_no_token() -> None:
    from pipeline.stack.launch import NODE_PORT_NAMES, ray_node_cmd
    from pipeline.stack.nodes import head_resources

    ports = {name: 20000 + i for i, name in enumerate(NODE_PORT_NAMES)} | {"worker_min": 21000}
    cmd = ray_node_cmd("127.0.0.1:6379", ports, "/tmp/x-node1", 2, 256, {"reader": 2.0})
    args = dict(zip(cmd[2::1], cmd[3::1]))
    assert cmd[1:4] == ["start", "--address", "127.0.0.1:6379"] and "--head" not in cmd
    assert args["--node-ip-address"] == "127.0.0.1" and args["--temp-dir"] == "/tmp/x-node1"
    assert args["--node-manager-port"] == "20000" and args["--max-worker-port"] == str(
        21000 + RAY_WORKER_PORTS - 1)
    assert json.loads(args["--resources"]) == {"reader": 2.0}
    assert not any("token" in a.lower() for a in cmd)  # the token travels in the environment
    assert head_resources(4, 0) == {"trainer": 4.0, "reader": 4.0}
    assert head_resources(4, 2) == {"trainer": 4.0}
    head = ray_cmd({n: 1 for n in PORT_NAMES} | {"ray_worker_min": 2}, "/t", 4, 64,
                   head_resources(4, 1))
    assert json.loads(head[head.index("--resources") + 1]) == {"trainer": 4.0}


def test_each_nodes_temp_dir_is_no_other_nodes_marker(tmp_path: Path) -> None:
    for sdir in (tmp_path, tmp_path / ("x" * 60)):
        dirs = [ray_temp_dir(sdir), *(ray_temp_dir(sdir, f"node{i}") for i in (1, 2, 10))]
        assert len(set(dirs)) == 4
        assert not any(a in b for a in dirs for b in dirs if a != b)
