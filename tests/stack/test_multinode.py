"""A real multi-node Ray cluster on loopback: the head offers ``trainer``, a reader node offers
``reader``; the tiny config trains 2 workers on the head with their readers on the reader
node; the reader node's raylet is killed by PID mid-run, with and without a replacement.

This module starts ITS OWN stack (`up(reader_nodes=1)`), not the session one, and stops it
by PID at the end, even on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from pipeline.stack import local as stack_mod
from pipeline.stack.nodes import add_reader_node, list_nodes
from pipeline.stack.procs import ProcRef, find_by_marker
from tests.train.fixtures import (PER_SHARD, REPO, TEST_SAMPLES, TRAIN_SAMPLES, Dataset,
                                  TrainProc, encoder_weights, metric_steps, mlflow_client,
                                  run_train, start_train)

pytestmark = pytest.mark.integration

PLACED = ("ingest.reader_resources={reader = 0.01}", "ray.resources_per_worker={trainer = 1}")
LOGGED = list(range(2, 25, 2))  # tiny.toml: 24 steps, a metric every 2


@dataclass
class Cluster:
    state_dir: Path
    info: stack_mod.StackInfo
    data: Dataset

    def node_ids(self) -> dict[str, str]:
        """{name: node id} of the ALIVE nodes ("head", "node1", ...)."""
        return {n["name"]: n["node_id"] for n in list_nodes(self.state_dir)
                if n["state"] == "ALIVE"}

    def raylet(self, name: str) -> ProcRef:
        state = stack_mod.load_state(self.state_dir)
        assert state is not None
        (ref,) = [r for r in state.refs(name) if r.name == "raylet"]
        return ref


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Its own stack with one reader node, the client env set, tiny Fashion-MNIST shards."""
    from pipeline.shards.writer import write_shards
    from pipeline.storage import Storage

    state_dir = Path(tempfile.mkdtemp(prefix="mocopipe-mn-"))
    saved: dict[str, str | None] = {}
    try:
        stack_mod.up(state_dir, timeout_s=240, num_cpus=4, reader_nodes=1)
        info = stack_mod.info(state_dir)
        saved = {key: os.environ.get(key) for key in info.env}
        os.environ.update(info.env)
        root = f"s3://corpus/mn-{uuid.uuid4().hex[:8]}"
        storage = Storage()
        m = write_shards("fashion-mnist:train", f"{root}/train", storage=storage,
                         max_samples=TRAIN_SAMPLES, samples_per_shard=PER_SHARD, progress=False)
        write_shards("fashion-mnist:test", f"{root}/test", storage=storage,
                     max_samples=TEST_SAMPLES, samples_per_shard=PER_SHARD, progress=False)
        yield Cluster(state_dir, info, Dataset(f"{root}/train", f"{root}/test", m.sha256))
    finally:
        state = stack_mod.load_state(state_dir)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        stack_mod.down(state_dir, purge=os.environ.get("MOCOPIPE_KEEP_STACK") != "1")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        survivors = [r for r in (state.refs() if state else []) if r.alive()]
        for node in state.reader_nodes if state else []:  # and Ray workers started later
            survivors += find_by_marker(node["temp_dir"])
        assert not survivors, f"stack processes still alive after down: {survivors}"


@dataclass
class PlacedRun:
    summary: dict[str, Any]
    output: str
    nodes: dict[str, str]


@pytest.fixture(scope="module")
def placed_run(cluster: Cluster) -> PlacedRun:
    """The uninterrupted reference: 2 workers on the head, their readers on node1."""
    nodes = cluster.node_ids()
    tp = run_train(cluster.data, f"placed-{uuid.uuid4().hex[:8]}", *PLACED)
    return PlacedRun(tp.summary(), tp.text, nodes)


def test_status_lists_every_node_with_its_resources(cluster: Cluster) -> None:
    nodes = {n["name"]: n for n in list_nodes(cluster.state_dir)}
    assert set(nodes) == {"head", "node1"}
    assert all(n["state"] == "ALIVE" for n in nodes.values())
    assert nodes["head"]["resources"].get("trainer") == 4.0
    assert "reader" not in nodes["head"]["resources"]
    assert nodes["node1"]["resources"].get("reader") == 2.0
    assert "trainer" not in nodes["node1"]["resources"]


def test_cli_status_prints_each_node_and_its_resources(cluster: Cluster) -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--state-dir",
                          str(cluster.state_dir)], capture_output=True, text=True, timeout=120,
                         cwd=REPO, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    nodes = cluster.node_ids()
    lines = {line.split()[1]: line for line in out.stdout.splitlines()
             if line.startswith("  node ")}
    assert lines["head"].split()[2:4] == ["ALIVE", nodes["head"][:12]]
    assert lines["head"].endswith("CPU=4, trainer=4"), lines["head"]
    assert lines["node1"].endswith("CPU=2, reader=2"), lines["node1"]


def test_readers_run_on_the_reader_node_and_trainers_on_the_head(
        cluster: Cluster, placed_run: PlacedRun) -> None:
    from pipeline.stack.local import _http_json

    head, reader = placed_run.nodes["head"], placed_run.nodes["node1"]
    assert placed_run.summary["steps"] == 24
    for rank in (0, 1):  # the placement line, once per worker start
        line = f"placement: rank {rank} on node {head[:12]}; readers (spread) on {reader[:12]}"
        assert placed_run.output.count(line) == 1, placed_run.output[-4000:]
    # Ray's state API (what `ray list actors --detail` and `ray.util.state.list_actors`
    # call), over HTTP with the stack's token: this process imported Ray before the
    # stack's token existed, and Ray reads its auth settings once per process.
    actors = _http_json(f"{cluster.info.ray_dashboard}/api/v0/actors?detail=true&limit=10000",
                        cluster.info.ray_token)["data"]["result"]["result"]
    readers = [a for a in actors if a["class_name"] == "ShardReader"]
    workers = [a for a in actors if a["class_name"] == "RayTrainWorker"]
    assert len(readers) >= 2 and len(workers) >= 2  # 1 reader per worker (tiny.toml)
    assert {a["node_id"] for a in readers} == {reader}
    assert {a["node_id"] for a in workers} == {head}


def test_bench_reader_placement_counts_bytes_only_across_nodes(cluster: Cluster) -> None:
    from tests.train.fixtures import TINY, overrides

    # In a child process, as `mocopipe bench` would run: this one imported Ray before the
    # stack's token existed, and Ray reads its auth settings once per process.
    sets = [a for s in [*overrides(cluster.data, "bench")[1::2], *PLACED] for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "placement", str(TINY),
                           *sets, "--batches", "4", "--rounds", "1", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    nodes = cluster.node_ids()
    per_batch = 2 * 16 * 1 * 28 * 28  # view1 + view2, uint8 (tiny.toml: 16 per worker)
    assert out["local"]["consumer_node"] == out["remote"]["consumer_node"] == nodes["head"]
    assert out["local"]["reader_nodes"] == [nodes["head"]]
    assert out["local"]["bytes_between_nodes"] == 0
    assert out["remote"]["reader_nodes"] == [nodes["node1"]]
    assert out["remote"]["bytes_between_nodes"] == 4 * per_batch
    assert out["ratio_batches_per_s"] == pytest.approx(
        out["remote"]["batches_per_s"] / out["local"]["batches_per_s"], rel=0.01)


def _lose_node(cluster: Cluster, name: str) -> None:
    """Take node `name` away as a lost machine would go: SIGKILL its raylet by PID together
    with every process under it (its Ray workers, the reader actors among them, and its
    agents). Killing the raylet alone leaves its workers serving direct actor calls for a few
    seconds, long enough for a fast machine to finish a tiny run before Ray notices."""
    proc = cluster.raylet(name).process()
    assert proc is not None, f"{name}'s raylet is not running"
    tree = [proc, *proc.children(recursive=True)]
    assert len(tree) > 1, f"{name}'s raylet has no worker processes to lose"
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _lose_node_after_checkpoint(cluster: Cluster, tp: TrainProc, name: str = "node1",
                                total_steps: int = 24) -> None:
    """Wait for the first committed checkpoint, then lose node `name` (see `_lose_node`)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and tp.proc.poll() is None:
        if "checkpoint: committed checkpoints/step-0000004" in tp.text:
            break
        time.sleep(0.05)
    assert tp.proc.poll() is None and f"step {total_steps}/{total_steps}" not in tp.text, \
        f"the run ended before the fault:\n{tp.text[-4000:]}"
    _lose_node(cluster, name)


@pytest.mark.slow
def test_reader_node_lost_and_replaced_gives_the_same_weights(
        cluster: Cluster, placed_run: PlacedRun, tmp_path: Path) -> None:
    tp = start_train(cluster.data, f"lost-{uuid.uuid4().hex[:8]}", *PLACED,
                     "ingest.placement_timeout_s=180")
    try:
        _lose_node_after_checkpoint(cluster, tp)
        replacement = add_reader_node(cluster.state_dir, timeout_s=240)
        rc = tp.wait(600)
    finally:
        tp.kill()
    assert rc == 0, tp.text[-6000:]
    assert "resumed from checkpoint step" in tp.text, tp.text[-4000:]
    assert f"readers (spread) on {replacement['node_id'][:12]}" in tp.text
    s = tp.summary()
    assert s["steps"] == 24
    client = mlflow_client()
    assert metric_steps(client, s["run_id"], "loss") == LOGGED  # each step once
    got = encoder_weights(client, s["run_id"], tmp_path / "got")
    want = encoder_weights(client, placed_run.summary["run_id"], tmp_path / "want")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted run"


@pytest.mark.slow
def test_reader_node_that_never_comes_back_fails_clearly_in_bounded_time(
        cluster: Cluster) -> None:
    # 20 epochs (240 steps): long enough that the run cannot end before the loss is seen.
    tp = start_train(cluster.data, f"gone-{uuid.uuid4().hex[:8]}", *PLACED,
                     "ingest.placement_timeout_s=10", "ray.max_failures=1", "train.epochs=20")
    try:
        readers = [n for n in cluster.node_ids() if n != "head"]
        assert readers, "no reader node alive"
        for name in readers[1:]:  # a replacement from an earlier test: lost for good too
            _lose_node(cluster, name)
        _lose_node_after_checkpoint(cluster, tp, readers[0], total_steps=240)
        killed_at = time.monotonic()
        rc = tp.wait(500)
        took = time.monotonic() - killed_at
    finally:
        tp.kill()
    assert rc != 0, tp.text[-4000:]
    assert "ingest.reader_resources: no alive Ray node offers resource 'reader'" in tp.text, \
        tp.text[-6000:]
    assert took < 400, f"the run failed {took:.0f}s after its reader node was lost"
