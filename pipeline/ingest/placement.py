"""Where reader actors and training workers may run: resource checks and scheduling choice.

Readers ask for ``ingest.reader_resources`` (e.g. ``{reader = 0.01}``), training workers for
``ray.resources_per_worker`` (e.g. ``{trainer = 1}``). Ray keeps a request that no node can
ever satisfy pending forever; `require_resources` turns that into one clear error naming the
config key and the resource, after waiting a bounded time for such a node to join (a
replacement node, or an autoscaler's). The driver calls it before training starts, each
train worker before it starts its readers.

`reader_strategy` is the placement rule: a train worker's readers prefer its own node when
that node offers the reader resources (no batch crosses nodes), otherwise they spread over
the nodes that do. Both are Ray scheduling strategies; Ray chooses the node.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Ray's own resources are always offered in some amount; checking custom ones is the point.
_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


class ResourceUnavailableError(ValueError):
    """No alive Ray node offers a resource that the config asks for."""


def config_requests(reader_resources: Mapping[str, float],
                    resources_per_worker: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The custom resources a run asks for, by the config key that asks for them."""
    return {"ingest.reader_resources": dict(reader_resources),
            "ray.resources_per_worker": dict(resources_per_worker)}


def offers(node: Mapping[str, Any], resources: Mapping[str, float]) -> bool:
    """True when `node` (an entry of ``ray.nodes()``) is alive and offers all `resources`."""
    total = node.get("Resources") or {}
    return bool(node.get("Alive")) and all(total.get(k, 0.0) >= v
                                            for k, v in resources.items() if v > 0)


def missing_resources(requests: Mapping[str, Mapping[str, float]],
                      nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """One message per requested custom resource that no alive node offers (pure)."""
    alive = [n for n in nodes if n.get("Alive")]
    offered = sorted({k for n in alive for k in (n.get("Resources") or {})
                      if not k.startswith("node:") and k not in _BUILTIN
                      and not k.startswith("accelerator_type:")})
    out = []
    for key, resources in requests.items():
        for name, amount in resources.items():
            if amount > 0 and not any(offers(n, {name: amount}) for n in alive):
                out.append(f"{key}: no alive Ray node offers resource {name!r} "
                           f"(>= {amount:g}); custom resources offered: "
                           f"{', '.join(offered) or 'none'}")
    return out


def require_resources(requests: Mapping[str, Mapping[str, float]], *, timeout_s: float,
                      nodes: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
                      poll_s: float = 1.0, log: Callable[[str], None] = print) -> None:
    """Return once every requested resource is offered by an alive node; wait at most
    `timeout_s` for one to join, then raise ResourceUnavailableError (one line)."""
    if nodes is None:
        import ray

        nodes = ray.nodes
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        missing = missing_resources(requests, nodes())
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise ResourceUnavailableError(f"{'; '.join(missing)} (waited {timeout_s:g}s "
                                           f"for such a node; see ingest.placement_timeout_s)")
        if not said:
            log(f"[mocopipe] waiting up to {timeout_s:g}s: {missing[0]}")
            said = True
        time.sleep(poll_s)


def reader_strategy(reader_resources: Mapping[str, float], node_id: str,
                    nodes: Sequence[Mapping[str, Any]]) -> Any:
    """Scheduling strategy for the readers of a train worker on node `node_id`: that node,
    softly, when it offers `reader_resources`; otherwise "SPREAD" over those that do."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = [n for n in nodes if n.get("NodeID") == node_id]
    if here and offers(here[0], reader_resources):
        return NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    return "SPREAD"


def actor_nodes(actors: Sequence[Any], *, timeout_s: float, what: str) -> list[str]:
    """The node id each actor runs on, once all have started (at most `timeout_s`).

    An actor still not placed after `timeout_s` (its resources exist but stay busy) raises
    ResourceUnavailableError naming `what` instead of waiting forever.
    """
    import ray
    from ray.exceptions import GetTimeoutError

    refs = [a.__ray_call__.remote(_node_of) for a in actors]
    try:
        return [str(x) for x in ray.get(refs, timeout=max(timeout_s, 1.0))]
    except GetTimeoutError:
        raise ResourceUnavailableError(f"{what}: reader actors not started after "
                                       f"{timeout_s:g}s (resources offered but busy?)") from None


def _node_of(_self: Any) -> str:
    import ray

    return ray.get_runtime_context().get_node_id()
