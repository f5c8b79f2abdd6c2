"""Unit tests of reader placement: resource checks and the scheduling choice (no Ray cluster)."""

from __future__ import annotations

import pytest
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.ingest.placement import (ResourceUnavailableError, config_requests,
                                       missing_resources, offers, reader_strategy,
                                       require_resources)

pytestmark = pytest.mark.unit

HEAD = {"NodeID": "a" * 56, "Alive": True,
        "Resources": {"CPU": 8.0, "trainer": 8.0, "node:127.0.0.1": 1.0, "memory": 1e9}}
READER = {"NodeID": "b" * 56, "Alive": True, "Resources": {"CPU": 2.0, "reader": 2.0}}
DEAD_READER = {**READER, "NodeID": "c" * 56, "Alive": False}


def test_offers_needs_an_alive_node_with_every_resource_in_amount() -> None:
    assert offers(READER, {"reader": 0.01})
    assert offers(READER, {"reader": 2.0, "CPU": 1.0})
    assert not offers(READER, {"reader": 2.5})
    assert not offers(READER, {"reader": 0.01, "trainer": 1.0})
    assert not offers(DEAD_READER, {"reader": 0.01})
    assert offers(HEAD, {"trainer": 1.0, "reader": 0.0})  # zero asks for nothing


def test_missing_resources_names_the_config_key_and_the_resource() -> None:
    requests = config_requests({"reader": 0.01}, {"trainer": 1.0, "gpu_node": 1.0})
    missing = missing_resources(requests, [HEAD, DEAD_READER])
    assert missing == [
        "ingest.reader_resources: no alive Ray node offers resource 'reader' (>= 0.01); "
        "custom resources offered: trainer",
        "ray.resources_per_worker: no alive Ray node offers resource 'gpu_node' (>= 1); "
        "custom resources offered: trainer"]
    assert missing_resources(config_requests({"reader": 0.01}, {"trainer": 1.0}),
                             [HEAD, READER]) == []


def test_require_resources_waits_for_a_node_to_join_then_gives_up() -> None:
    seen: list[list[dict]] = [[HEAD], [HEAD], [HEAD, READER]]
    calls = iter(seen)
    logged: list[str] = []
    require_resources(config_requests({"reader": 0.01}, {}), timeout_s=5.0,
                      nodes=lambda: next(calls), poll_s=0.01, log=logged.append)
    assert len(logged) == 1 and "'reader'" in logged[0]  # said once while waiting
    with pytest.raises(ResourceUnavailableError, match=r"^ingest.reader_resources: .*'reader'"
                                                       r".*waited 0.05s"):
        require_resources(config_requests({"reader": 0.01}, {}), timeout_s=0.05,
                          nodes=lambda: [HEAD], poll_s=0.01, log=lambda m: None)


def test_readers_prefer_their_workers_node_else_spread() -> None:
    nodes = [HEAD, READER]
    own = reader_strategy({"reader": 0.01}, READER["NodeID"], nodes)
    assert isinstance(own, NodeAffinitySchedulingStrategy)
    assert own.node_id == READER["NodeID"] and own.soft
    assert reader_strategy({"reader": 0.01}, HEAD["NodeID"], nodes) == "SPREAD"
    # no reader resources asked: every node qualifies, so the worker's own node
    assert isinstance(reader_strategy({}, HEAD["NodeID"], nodes), NodeAffinitySchedulingStrategy)
    assert reader_strategy({}, "unknown", nodes) == "SPREAD"
