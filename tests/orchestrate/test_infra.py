"""infra/: every YAML parses, Kubernetes manifests fit their kinds, no secret is written down."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.orchestrate.cron import validate_cron
from tests.orchestrate.k8s_schemas import SCHEMAS

pytestmark = pytest.mark.unit

INFRA = Path(__file__).resolve().parents[2] / "infra"
K8S = INFRA / "k8s"
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PGPASS)", re.I)


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    """(file#index, document) of every manifest, plus RayJob templates embedded in ConfigMaps."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is None:
                continue
            out.append((f"{path.name}#{i}", doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    if key.endswith((".yaml", ".yml")):  # as the CronJob renders it
                        rendered = text.replace("__DATE__", "2026-01-31")
                        out.append((f"{path.name}#{i}:{key}", yaml.safe_load(rendered)))
    return out


def test_every_yaml_in_infra_parses() -> None:
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert {p.name for p in files} >= {"compose.yaml", "raycluster.yaml", "rayjob-pretrain.yaml",
                                       "raycronjob-nightly.yaml", "cronjob-nightly.yaml"}
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), f"{path} is empty"


def test_manifests_cover_the_kinds() -> None:
    kinds = {doc["kind"] for _, doc in k8s_docs()}
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob"} <= kinds


@pytest.mark.parametrize("where,doc", k8s_docs(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_matches_its_kind(where: str, doc: dict[str, Any]) -> None:
    assert doc.get("kind") in SCHEMAS, f"{where}: no schema for kind {doc.get('kind')!r}"
    jsonschema.validate(doc, SCHEMAS[doc["kind"]])
    spec = doc.get("spec", {})
    for schedule in (spec.get("schedule"),):
        if schedule:
            validate_cron(schedule)  # the 5-field syntax cron / KubeRay accept


def test_schemas_reject_broken_manifests() -> None:
    """The schema check can fail: typical mistakes are caught."""
    docs = dict(k8s_docs())
    rayjob = docs["rayjob-pretrain.yaml#0"]
    broken = []
    bad = copy.deepcopy(rayjob)
    del bad["spec"]["entrypoint"]
    broken.append(("RayJob", bad))
    bad = copy.deepcopy(rayjob)
    bad["spec"]["shutdownAfterJobFinish"] = True  # misspelt field
    broken.append(("RayJob", bad))
    bad = copy.deepcopy(rayjob)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-cpus": 2}
    broken.append(("RayJob", bad))
    cron = next(d for w, d in docs.items() if d.get("kind") == "CronJob")
    bad = copy.deepcopy(cron)
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    broken.append(("CronJob", bad))
    raycron = next(d for d in docs.values() if d.get("kind") == "RayCronJob")
    bad = copy.deepcopy(raycron)
    del bad["spec"]["jobTemplate"]
    broken.append(("RayCronJob", bad))
    for kind, doc in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, SCHEMAS[kind])


def test_no_secret_values_in_manifests() -> None:
    for where, doc in k8s_docs():
        assert doc.get("kind") != "Secret", f"{where}: Secrets are created from infra/.env, not committed"
        for env in _find(doc, "env"):
            for var in env:
                if SECRETISH.search(var["name"]):
                    assert "value" not in var, f"{where}: {var['name']} must come from a Secret"


def test_raycronjob_says_it_is_alpha() -> None:
    text = (K8S / "raycronjob-nightly.yaml").read_text()
    assert "ALPHA" in text and "feature gate" in text and "RayCronJob=true" in text


def test_compose_services_and_only_env_references() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"seaweedfs", "postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--serve-artifacts" in mlflow_cmd and "s3://mlflow" in mlflow_cmd
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    for name in ("ray-head", "ray-worker", "mlflow"):
        assert services[name]["build"]["dockerfile"] == "infra/docker/Dockerfile"
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRETISH.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[?-][^}]*)?\}", str(value)), \
                    f"compose {name}.{key} must be a ${{VAR}} reference, got {value!r}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    # No literal credential anywhere: every URI with userinfo is built from references.
    text = (INFRA / "compose.yaml").read_text()
    assert not re.search(r"://[^$/\s:@]+:[^$/\s@]+@", text)


def test_env_example_has_no_values_for_secrets_and_env_is_ignored() -> None:
    for line in (INFRA / "env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            if SECRETISH.search(key):
                assert value == "", f"env.example must leave {key} empty"
    gitignore = (INFRA.parent / ".gitignore").read_text().splitlines()
    assert "infra/.env" in gitignore


def dockerfile_bases(text: str) -> dict[str, tuple[str, str, str]]:
    """{stage name: (ray version, python tag, platform)} of every `FROM rayproject/ray:...`
    stage, with the ARG defaults declared before the first FROM substituted."""
    args: dict[str, str] = {}
    out: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        if m := re.match(r"^ARG (\w+)=(\S+)", line):
            args.setdefault(m.group(1), m.group(2))
        if m := re.match(r"^FROM (\S+)(?: AS (\S+))?", line, re.I):
            image = re.sub(r"\$\{(\w+)\}", lambda a: args[a.group(1)], m.group(1))
            if image.startswith("rayproject/ray:"):
                ray, py, platform = image.split(":", 1)[1].split("-", 2)
                out[m.group(2) or image] = (ray, py, platform)
    return out


def test_dockerfile_cpu_and_cuda_share_python_and_ray() -> None:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    bases = dockerfile_bases(text)
    assert set(bases) == {"base-cpu", "base-cuda"}, bases
    (ray_cpu, py_cpu, plat_cpu), (ray_gpu, py_gpu, plat_gpu) = bases["base-cpu"], bases["base-cuda"]
    assert (ray_cpu, py_cpu) == (ray_gpu, py_gpu), bases
    assert plat_cpu == "cpu" and plat_gpu.startswith("cu"), bases
    assert re.search(r"^FROM base-\$\{FLAVOR\} AS mocopipe", text, re.M)  # shared steps
    assert re.search(r"^ARG FLAVOR=cpu", text, re.M)
    # The image's Ray is the tested one, and its Python is the one the project runs on here.
    tested = (INFRA.parent / "constraints.txt").read_text()
    assert f"ray=={ray_cpu}\n" in tested
    assert py_cpu == f"py{sys.version_info.major}{sys.version_info.minor}"
    # The check can fail: a CUDA base on another Python is caught.
    drifted = dockerfile_bases(text.replace("-${PYTHON_TAG}-cu", "-py312-cu"))
    assert drifted["base-cpu"][1] != drifted["base-cuda"][1]


def raycluster_nodes(doc: dict[str, Any]) -> list[dict[str, float]]:
    """The Ray resources each pod of a RayCluster offers (CPU/GPU limits, custom resources)."""
    def node(template: dict[str, Any], params: dict[str, str]) -> dict[str, float]:
        limits = template["spec"]["containers"][0]["resources"]["limits"]
        res = {"CPU": float(params.get("num-cpus", limits["cpu"])),
               "GPU": float(limits.get("nvidia.com/gpu", 0))}
        if "resources" in params:
            res.update(json.loads(json.loads(params["resources"])))
        return res

    spec = doc["spec"]
    head = spec["headGroupSpec"]
    nodes = [node(head["template"], head["rayStartParams"])]
    for group in spec["workerGroupSpecs"]:
        nodes += [node(group["template"], group["rayStartParams"])] * group["replicas"]
    return nodes


def test_raycluster_places_the_imagenet_config() -> None:
    from pipeline.config import load_config
    from pipeline.train.preflight import PreflightError, check_placement

    (doc,) = [d for w, d in k8s_docs() if w.startswith("raycluster.yaml")]
    nodes = raycluster_nodes(doc)
    cfg = load_config("imagenet_r50")
    assert cfg.ray.resources_per_worker == {"trainer": 1.0}  # trainers on the GPU group
    assert set(cfg.ingest.reader_resources) == {"reader"}  # readers on the CPU reader group
    check_placement(cfg, nodes)
    gpu_pods = [n for n in nodes if n["GPU"] > 0]
    assert sum(n["GPU"] for n in gpu_pods) == cfg.ray.num_workers  # no idle, no missing GPU
    assert all(n.get("reader", 0) == 0 for n in gpu_pods)
    groups = {g["groupName"]: g for g in doc["spec"]["workerGroupSpecs"]}
    for g in groups.values():  # autoscaling is off: what is declared is what runs
        assert g["minReplicas"] == g["replicas"] == g["maxReplicas"]
    bigger = load_config("imagenet_r50", ["ray.num_workers=16", "moco.queue_size=65536"])
    with pytest.raises(PreflightError, match=r"^ray.num_workers"):  # 16 workers do not fit
        check_placement(bigger, nodes)


def _find(node: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a nested structure."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += _find(v, key)
    elif isinstance(node, list):
        for v in node:
            found += _find(v, key)
    return found


FAKE_KUBECTL = """#!/bin/sh
# Stand-in kubectl: RayJobs are files in $STORE named after metadata.name.
if [ "$1" = get ]; then test -f "$STORE/$3"; exit $?; fi
if [ "$1" = create ]; then
  cat > "$STORE/incoming.yaml"
  name=$(sed -n 's/^  name: //p' "$STORE/incoming.yaml" | head -1)
  if [ -f "$STORE/$name" ]; then echo "AlreadyExists" >&2; exit 1; fi
  mv "$STORE/incoming.yaml" "$STORE/$name"; echo "rayjob.ray.io/$name created"; exit 0
fi
exit 2
"""


def test_cronjob_fallback_creates_one_dated_rayjob_per_day(tmp_path, monkeypatch) -> None:
    """Run the CronJob's own shell script twice with a stand-in kubectl: the first run
    creates tonight's RayJob (a valid RayJob, dated), the second creates nothing."""
    import datetime as dt
    import os
    import subprocess

    docs = list(yaml.safe_load_all((K8S / "cronjob-nightly.yaml").read_text()))
    template = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["rayjob.yaml"]
    cron = next(d for d in docs if d["kind"] == "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = pod["containers"][0]["command"][-1]
    (tmp_path / "template").mkdir()
    (tmp_path / "template" / "rayjob.yaml").write_text(template)
    (tmp_path / "store").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "kubectl").write_text(FAKE_KUBECTL)
    (tmp_path / "bin" / "kubectl").chmod(0o755)
    env = {**os.environ, "STORE": str(tmp_path / "store"),
           "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    script = script.replace("/template/", f"{tmp_path}/template/")
    before = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    first = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    after = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    (name,) = [p.name for p in (tmp_path / "store").iterdir()]
    day = name.removeprefix("mocopipe-nightly-demo-")
    assert day in (before, after)  # the UTC date of the run (midnight may pass in between)
    created = yaml.safe_load((tmp_path / "store" / name).read_text())
    jsonschema.validate(created, SCHEMAS["RayJob"])
    assert created["spec"]["jobId"] == f"nightly-demo-{day}"
    assert created["spec"]["entrypoint"].endswith(f"--date {day}")
    second = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "already created" in second.stdout
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [name]
