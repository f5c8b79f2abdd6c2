"""More Ray nodes beside the local stack's head: reader nodes on loopback, and the node list.

Ray runs several raylets on one machine as separate nodes (each with its own object store,
resources and temp dir), which is enough to exercise the multi-node paths here. A reader
node is `ray start --address HEAD` with every port pinned to a free loopback port, the
head's token in its environment, and the custom resource ``reader`` that reader actors ask
for (``ingest.reader_resources = {reader = 0.01}``). The head offers ``trainer``, which
only training workers ask for (``ray.resources_per_worker = {trainer = 1}``), standing in
for the GPUs of a real training group.

Each node's processes are found by their own temp dir (a marker no other node's command
lines contain) and recorded in stack.json under the node's name, so `down` and the fault
tests stop exactly them, by PID.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.stack.launch import (NODE_PORT_NAMES, RAY_WORKER_PORTS, RayStarter, ray_node_cmd,
                                   ray_temp_dir, server_env)
from pipeline.stack.procs import StackError, find_by_marker, pick_ports, stop, tree, wait_until

READER = "reader"  # custom resource of the nodes that host reader actors
TRAINER = "trainer"  # custom resource of the nodes that host training workers

__all__ = ["READER", "TRAINER", "head_resources", "add_reader_node", "stop_node",
           "list_nodes", "node_markers", "purge_node_dirs"]


def head_resources(num_cpus: int, reader_nodes: int) -> dict[str, float]:
    """The head's custom resources: ``trainer`` always; ``reader`` only when no reader
    node joins it (then a config that places readers on ``reader`` runs on one node)."""
    out = {TRAINER: float(num_cpus)}
    if reader_nodes == 0:
        out[READER] = float(num_cpus)
    return out


def _raylet_node_id(marker: str) -> str | None:
    """The node id on the command line of the raylet whose command line has `marker`."""
    for ref in find_by_marker(marker):
        proc = ref.process()
        if ref.name != "raylet" or proc is None:
            continue
        for arg in proc.cmdline():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
    return None


def _ray_nodes(state: Any, token: str) -> list[dict[str, Any]]:
    from pipeline.stack.local import _http_json

    url = f"{state.ray_dashboard}/api/v0/nodes?limit=1000&detail=true"
    return list(_http_json(url, token)["data"]["result"]["result"])


def add_reader_node(state_dir: str | Path, *, num_cpus: int = 2, object_store_mb: int = 256,
                    timeout_s: float = 180.0) -> dict[str, Any]:
    """Start one more Ray node offering ``reader`` and join it to the stack's head.

    Returns its record (``name``, ``node_id``, ``temp_dir``, ``ports``), also saved in
    stack.json (``reader_nodes``; its processes under ``procs[name]``). On failure its
    processes are stopped and StackError says why, with the tail of its log.
    """
    from pipeline.stack.local import Credentials, _env_for, load_state

    sdir = Path(state_dir).resolve()
    state = load_state(sdir)
    if state is None or not state.running:
        raise StackError(f"no running stack in {sdir}; run `mocopipe up` first")
    creds = Credentials.load_or_create(sdir)
    index = 1 + max((int(n["name"][len("node"):]) for n in state.reader_nodes), default=0)
    name = f"node{index}"
    temp = ray_temp_dir(sdir, name)
    taken = [*state.ports.values(), *(p for n in state.reader_nodes for p in n["ports"].values())]
    ports = dict(zip(NODE_PORT_NAMES, pick_ports(len(NODE_PORT_NAMES), avoid=taken)))
    ports["worker_min"] = pick_ports(1, span=RAY_WORKER_PORTS,
                                     avoid=[*taken, *ports.values()])[0]
    log = sdir / "logs" / f"ray-{name}.log"
    cmd = ray_node_cmd(state.ray_address, ports, temp, num_cpus, object_store_mb,
                       {READER: float(num_cpus)})
    starter = RayStarter(cmd, server_env(_env_for(state, creds)), log, temp,
                         ports["agent_http"], timeout_s)
    record: dict[str, Any] = {"name": name, "node_id": "", "temp_dir": temp, "ports": ports}
    state.reader_nodes.append(record)
    state.save()  # before starting: `down` finds its processes even if we die here
    try:
        starter.start()
        starter.join(3 * timeout_s)
        if starter.error is not None:
            raise starter.error
        wait_until(lambda: bool(_raylet_node_id(temp)), what=f"raylet of Ray node {name}",
                   timeout_s=timeout_s, log_path=log)
        record["node_id"] = node_id = _raylet_node_id(temp)
        wait_until(lambda: any(n["node_id"] == node_id and n["state"] == "ALIVE"
                               for n in _ray_nodes(state, creds.ray_token)),
                   what=f"Ray node {name} ({node_id}) joining {state.ray_address}",
                   timeout_s=timeout_s, log_path=log)
    except BaseException:
        starter.kill()
        stop(tree(find_by_marker(temp)), timeout_s=3.0)
        state.procs[name] = []
        state.save()
        raise
    state.procs[name] = [r.to_dict() for r in find_by_marker(temp)]
    state.save()
    return record


def stop_node(state_dir: str | Path, name: str) -> list[int]:
    """Stop one joined node's processes by PID (its record stays). Returns PIDs stopped."""
    from pipeline.stack.local import load_state

    state = load_state(Path(state_dir).resolve())
    nodes = {n["name"]: n for n in (state.reader_nodes if state else [])}
    if state is None or name not in nodes:
        raise StackError(f"no Ray node {name!r} in {state_dir}; known: {', '.join(nodes)}")
    return stop(tree([*state.refs(name), *find_by_marker(nodes[name]["temp_dir"])]),
                timeout_s=5.0)


def node_markers(state: Any) -> list[str]:
    """The temp dirs that mark each joined node's processes."""
    return [n["temp_dir"] for n in state.reader_nodes]


def purge_node_dirs(state: Any) -> None:
    """Delete the joined nodes' temp dirs that live outside the state dir."""
    for marker in node_markers(state):
        if marker.startswith("/tmp/mocopipe-node"):
            shutil.rmtree(marker, ignore_errors=True)


def list_nodes(state_dir: str | Path) -> list[dict[str, Any]]:
    """The Ray cluster's nodes (Ray's state API): ``name`` (head / nodeN / ?), ``node_id``,
    ``state``, ``resources`` (totals), head first, then by name."""
    from pipeline.stack.local import Credentials, load_state

    sdir = Path(state_dir).resolve()
    state = load_state(sdir)
    if state is None:
        raise StackError(f"no stack in {sdir} (no stack.json); run `mocopipe up` first")
    names = {n["node_id"]: n["name"] for n in state.reader_nodes if n.get("node_id")}
    out = []
    for node in _ray_nodes(state, Credentials.load_or_create(sdir).ray_token):
        name = "head" if node.get("is_head_node") else names.get(node["node_id"], "?")
        out.append({"name": name, "node_id": node["node_id"], "state": node["state"],
                    "resources": dict(node.get("resources_total") or {}),
                    "since": time.strftime("%H:%M:%S", time.localtime(
                        (node.get("start_time_ms") or 0) / 1000))})
    return sorted(out, key=lambda n: (n["name"] != "head", n["name"], n["state"]))
