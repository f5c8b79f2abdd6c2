"""Minimal JSON schemas of the Kubernetes kinds in infra/k8s: the fields each kind requires.

Written from the KubeRay v1 CRDs (RayCluster, RayJob, RayCronJob; ray.io/v1) and the
Kubernetes API reference (batch/v1 CronJob, v1 ServiceAccount/ConfigMap, RBAC). They check
what `kubectl apply` would reject or KubeRay would not run: missing required fields, wrong
types, wrong enum values, and unknown fields at the levels we write (additionalProperties is
closed on the spec objects so a misspelt key such as `shutdownAfterJobFinish` fails).
"""

from __future__ import annotations

from typing import Any

DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
DNS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
QUANTITY = {"type": ["string", "integer", "number"]}

METADATA = {
    "type": "object", "required": ["name"],
    "properties": {"name": DNS_NAME, "namespace": DNS_LABEL,
                   "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                   "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
}

ENV_VAR = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "value": {"type": "string"},
        "valueFrom": {"type": "object", "minProperties": 1, "maxProperties": 1,
                      "properties": {"secretKeyRef": {"type": "object", "required": ["name", "key"]},
                                     "configMapKeyRef": {"type": "object", "required": ["name", "key"]},
                                     "fieldRef": {"type": "object", "required": ["fieldPath"]}}},
    },
}

CONTAINER = {
    "type": "object", "required": ["name", "image"],
    "properties": {
        "name": DNS_LABEL,
        "image": {"type": "string", "minLength": 1},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "array", "items": ENV_VAR},
        "envFrom": {"type": "array", "items": {
            "type": "object", "minProperties": 1,
            "properties": {"secretRef": {"type": "object", "required": ["name"]},
                           "configMapRef": {"type": "object", "required": ["name"]}}}},
        "ports": {"type": "array", "items": {
            "type": "object", "required": ["containerPort"],
            "properties": {"containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                           "name": {"type": "string", "maxLength": 15}}}},
        "resources": {"type": "object", "additionalProperties": False, "properties": {
            "requests": {"type": "object", "additionalProperties": QUANTITY},
            "limits": {"type": "object", "additionalProperties": QUANTITY}}},
        "volumeMounts": {"type": "array", "items": {
            "type": "object", "required": ["name", "mountPath"]}},
    },
}

POD_SPEC = {
    "type": "object", "required": ["containers"],
    "properties": {
        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
        "serviceAccountName": DNS_NAME,
        "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    },
}

POD_TEMPLATE = {"type": "object", "required": ["spec"],
                "properties": {"metadata": {"type": "object"}, "spec": POD_SPEC}}

# KubeRay turns every rayStartParams value into a `ray start --key=value` flag: strings only.
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}

RAY_CLUSTER_SPEC = {
    "type": "object", "required": ["headGroupSpec"], "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "authOptions": {"type": "object", "additionalProperties": False, "properties": {
            "mode": {"enum": ["disabled", "token"]}, "secretName": {"type": "string"},
            "enableK8sTokenAuth": {"type": "boolean"}}},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": {"type": "object", "required": ["template"], "additionalProperties": False,
                          "properties": {"rayStartParams": RAY_START_PARAMS,
                                         "serviceType": {"type": "string"},
                                         "template": POD_TEMPLATE}},
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "required": ["groupName", "template"], "additionalProperties": False,
            "properties": {"groupName": DNS_LABEL, "replicas": {"type": "integer", "minimum": 0},
                           "minReplicas": {"type": "integer", "minimum": 0},
                           "maxReplicas": {"type": "integer", "minimum": 0},
                           "rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE}}},
    },
}

RAY_JOB_SPEC = {
    "type": "object", "required": ["entrypoint"], "additionalProperties": False,
    "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
    "properties": {
        "entrypoint": {"type": "string", "minLength": 1},
        "jobId": {"type": "string"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "backoffLimit": {"type": "integer", "minimum": 0},
        "suspend": {"type": "boolean"},
        "runtimeEnvYAML": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"},
        "rayClusterSpec": RAY_CLUSTER_SPEC,
        "clusterSelector": {"type": "object", "minProperties": 1,
                            "additionalProperties": {"type": "string"}},
        "submitterPodTemplate": POD_TEMPLATE,
    },
}

CRON = {"type": "string", "pattern": r"^\S+( \S+){4}$"}

# A Job's pods must not restart forever: restartPolicy is required and never "Always".
JOB_POD_SPEC = {**POD_SPEC, "required": ["containers", "restartPolicy"],
                "properties": {**POD_SPEC["properties"],
                               "restartPolicy": {"enum": ["OnFailure", "Never"]}}}
JOB_SPEC = {
    "type": "object", "required": ["template"],
    "properties": {"backoffLimit": {"type": "integer", "minimum": 0},
                   "template": {"type": "object", "required": ["spec"],
                                "properties": {"metadata": {"type": "object"},
                                               "spec": JOB_POD_SPEC}}},
}
CRONJOB_SPEC = {
    "type": "object", "required": ["schedule", "jobTemplate"], "additionalProperties": False,
    "properties": {
        "schedule": CRON, "timeZone": {"type": "string"},
        "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
        "startingDeadlineSeconds": {"type": "integer", "minimum": 0},
        "successfulJobsHistoryLimit": {"type": "integer", "minimum": 0},
        "failedJobsHistoryLimit": {"type": "integer", "minimum": 0},
        "suspend": {"type": "boolean"},
        "jobTemplate": {"type": "object", "required": ["spec"], "properties": {"spec": JOB_SPEC}},
    },
}


def _kind(api: str, kind: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object", "required": ["apiVersion", "kind", "metadata"],
        "properties": {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": METADATA},
    }
    if spec is not None:
        schema["required"].append("spec")
        schema["properties"]["spec"] = spec
    return schema


SCHEMAS: dict[str, dict[str, Any]] = {
    "RayCluster": _kind("ray.io/v1", "RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": _kind("ray.io/v1", "RayJob", RAY_JOB_SPEC),
    "RayCronJob": _kind("ray.io/v1", "RayCronJob", {
        "type": "object", "required": ["schedule", "jobTemplate"], "additionalProperties": False,
        "properties": {"schedule": CRON, "suspend": {"type": "boolean"},
                       "jobTemplate": RAY_JOB_SPEC}}),
    "CronJob": _kind("batch/v1", "CronJob", CRONJOB_SPEC),
    "ServiceAccount": _kind("v1", "ServiceAccount", None),
    "ConfigMap": {**_kind("v1", "ConfigMap", None), "properties": {
        **_kind("v1", "ConfigMap", None)["properties"],
        "data": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "Role": {**_kind("rbac.authorization.k8s.io/v1", "Role", None), "required": [
        "apiVersion", "kind", "metadata", "rules"], "properties": {
        **_kind("rbac.authorization.k8s.io/v1", "Role", None)["properties"],
        "rules": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["apiGroups", "resources", "verbs"]}}}},
    "RoleBinding": {**_kind("rbac.authorization.k8s.io/v1", "RoleBinding", None), "required": [
        "apiVersion", "kind", "metadata", "roleRef", "subjects"], "properties": {
        **_kind("rbac.authorization.k8s.io/v1", "RoleBinding", None)["properties"],
        "roleRef": {"type": "object", "required": ["apiGroup", "kind", "name"]},
        "subjects": {"type": "array", "minItems": 1,
                     "items": {"type": "object", "required": ["kind", "name"]}}}},
}
