"""Pure builders: a validated task plus its profile become the Kubernetes objects a cluster receives.

This is the single place where pod shape is decided (command, env, resources, GPU, probes,
labels, security context). Both runtimes consume these objects: the Kubernetes runtime applies
them, the local runtime runs their containers as processes.
"""

import json
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.names import canary_name, inference_name, job_name
from app.profiles import ModelProfile, Resources
from models.spec import (
    LLM_STREAM_DRAIN_SECONDS,
    QLORA_ENV,
    SERVE_PORT_ENV,
    SERVE_SPEC_ENV,
    TRAIN_SPEC_ENV,
    ServeSpec,
    TrainSpec,
)

MANAGED_BY = "fastapi-mlops-api"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_TASK_ID = "mlops.dev/task-id"
LABEL_TASK_KIND = "mlops.dev/task-kind"
LABEL_PROFILE = "mlops.dev/profile"
LABEL_MODEL_ID = "mlops.dev/model-id"
ANNOTATION_REQUEST = "mlops.dev/request"
# The name a language model's server answers to (OpenAI's "model"), for the proxy to send.
ANNOTATION_SERVED_MODEL = "mlops.dev/served-model-name"
# An inference Deployment's revisions (app/core/revisions.py): the cluster is their database.
ANNOTATION_ROLLOUT = "mlops.dev/rollout"
# On a model server's pods: the revision whose model they serve (not in any selector).
LABEL_REVISION = "mlops.dev/revision"

KIND_TRAINING = "training"
KIND_INFERENCE = "inference"
# The task-kind label of a canary's Deployment, pods and Service: a value the stable Deployment's
# and Service's selectors (task-kind "inference") never match, so each selects only its own pods.
# A canary belongs to its task (same task-id label); it is not a task of its own.
KIND_CANARY = "inference-canary"

# Workload images run as this unprivileged user (see docker/).
RUN_AS_USER = 10001
WORKDIR = "/app"
HTTP_PORT_NAME = "http"
SERVICE_PORT = 80
READINESS_PATH = "/ready"
LIVENESS_PATH = "/health"

# A rolling update that fails no request on a real cluster (besides maxUnavailable 0, maxSurge 1
# and the readiness probe):
# - A stopping model server first sleeps (preStop), still answering, while the EndpointSlice
#   controller and every node's kube-proxy (and an ingress) drop it; only then does it get SIGTERM,
#   on which uvicorn stops accepting and finishes the requests in flight. The kubelet's own sleep
#   action (beta and on by default since 1.30) needs no `sleep` binary in the image.
PRESTOP_SLEEP_SECONDS = 5
# After the sleep: time for the requests in flight to finish before SIGKILL. A language model's
# streams can run for minutes; they finish on the revision that started them.
DRAIN_SECONDS = 25
LLM_DRAIN_SECONDS = LLM_STREAM_DRAIN_SECONDS + 5  # vLLM drains this long itself, then exits
# A new pod must stay ready this long before it counts as available and an old one is stopped:
# by then the endpoints that route to it have reached the nodes, and a server that passes its
# readiness probe once and then crashes does not take a serving one with it.
MIN_READY_SECONDS = 5
# The startup probe's period; the Deployment's progress deadline outlasts its whole window, so a
# model still loading within it is not reported as a failed rollout.
STARTUP_PERIOD_SECONDS = 10
PROGRESS_MARGIN_SECONDS = 120


@dataclass(frozen=True)
class ClusterRefs:
    """Names of the ConfigMap and Secret that workload pods read by reference."""

    config_map: str = "mlops-config"
    s3_secret: str = "mlops-s3-credentials"


def task_selector(kind: str, task_id: str | None = None) -> dict[str, str]:
    selector = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_TASK_KIND: kind}
    if task_id is not None:
        selector[LABEL_TASK_ID] = task_id
    return selector


def _labels(kind: str, task_id: str, profile: str, model_id: str | None = None) -> dict[str, str]:
    labels = {
        LABEL_NAME: f"mlops-{'trainer' if kind == KIND_TRAINING else 'inference'}",
        LABEL_COMPONENT: kind,
        **task_selector(kind, task_id),
        LABEL_PROFILE: profile,
    }
    if model_id:
        labels[LABEL_MODEL_ID] = model_id
    return labels


def _metadata(name: str, labels: dict[str, str], request: dict[str, Any], served_model_name: str | None = None
              ) -> dict[str, Any]:
    annotations = {ANNOTATION_REQUEST: json.dumps(request, sort_keys=True, separators=(",", ":"))}
    if served_model_name:
        annotations[ANNOTATION_SERVED_MODEL] = served_model_name
    return {"name": name, "labels": labels, "annotations": annotations}


def _env_from_cluster(refs: ClusterRefs) -> list[dict[str, Any]]:
    """Endpoints from the ConfigMap, credentials from the Secret: never inline values."""

    def config(key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": refs.config_map, "key": key}
        if optional:
            ref["optional"] = True
        return {"name": key, "valueFrom": {"configMapKeyRef": ref}}

    def secret(key: str) -> dict[str, Any]:
        return {"name": key, "valueFrom": {"secretKeyRef": {"name": refs.s3_secret, "key": key, "optional": True}}}

    return [
        config("MLFLOW_TRACKING_URI"),
        config("MLFLOW_S3_ENDPOINT_URL", optional=True),
        config("MLOPS_S3_ENDPOINT_URL", optional=True),
        secret("AWS_ACCESS_KEY_ID"),
        secret("AWS_SECRET_ACCESS_KEY"),
    ]


def _resources(resources: Resources, profile: ModelProfile, use_gpu: bool, gpu_count: int | None = None) -> dict:
    requests = dict(resources.requests)
    limits = dict(resources.limits)
    if use_gpu:
        count = str(gpu_count or profile.gpu.count)
        # Extended resources are set as limits; requests default to them (and must equal them).
        limits[profile.gpu.resource_name] = count
        requests[profile.gpu.resource_name] = count
    return {"requests": requests, "limits": limits}


_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _llm_env(profile: ModelProfile) -> list[dict[str, Any]]:
    """What a language-model pod (LoRA Job or vLLM server) needs besides the weight cache."""
    assert profile.llm is not None
    env: list[dict[str, Any]] = [
        # vLLM reports usage to its authors by default; a platform's pods keep to themselves.
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    secret = profile.llm.hf_token_secret
    if secret is not None:  # gated Hugging Face models; optional, so public models need no Secret
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": secret.name, "key": secret.key, "optional": True}}})
    return env


def _llm_volumes(profile: ModelProfile, container: dict[str, Any], shm: bool) -> list[dict[str, Any]]:
    """The weight cache (and vLLM's shared memory) of a language-model pod."""
    assert profile.llm is not None
    container["env"] += _llm_env(profile)
    cache = profile.llm.model_cache
    source: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": cache.claim_name}} if cache.claim_name else {"emptyDir": {}}
    )
    volumes = [{"name": "model-cache", **source}]
    container["volumeMounts"].append({"name": "model-cache", "mountPath": cache.mount_path})
    container["env"] += [
        {"name": "HF_HOME", "value": f"{cache.mount_path}/huggingface"},
        {"name": "MLOPS_MODEL_CACHE", "value": cache.mount_path},
    ]
    if shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": profile.llm.shm_size}})
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes


def _pod_spec(containers: list[dict[str, Any]], profile: ModelProfile, use_gpu: bool, **extra: Any) -> dict:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # Service links would put e.g. MLFLOW_PORT=tcp://... into the pod, which MLflow misreads.
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        # MLflow and the frameworks write caches; the image's root filesystem stays untouched.
        "volumes": [{"name": "tmp", "emptyDir": {}}, *extra.pop("volumes", [])],
        **extra,
    }
    if use_gpu:
        if profile.gpu.runtime_class_name:
            spec["runtimeClassName"] = profile.gpu.runtime_class_name
        if profile.gpu.tolerations:
            spec["tolerations"] = [t.model_dump(exclude_none=True) for t in profile.gpu.tolerations]
        if profile.gpu.node_selector:
            spec["nodeSelector"] = dict(profile.gpu.node_selector)
    return spec


def _container(name: str, image: str, script: str, env: list[dict[str, Any]], resources: dict) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": WORKDIR,
        "command": ["python", script],
        "env": [
            *env,
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": resources,
        "securityContext": dict(_CONTAINER_SECURITY),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def training_job(
    spec: TrainSpec, profile: ModelProfile, image: str, request: dict[str, Any], refs: ClusterRefs = ClusterRefs()
) -> dict[str, Any]:
    """The batch/v1 Job that runs script/train.py for one training task."""
    assert profile.trainer is not None
    labels = _labels(KIND_TRAINING, spec.task_id, profile.name)
    env = [{"name": TRAIN_SPEC_ENV, "value": spec.model_dump_json()}, *_env_from_cluster(refs)]
    container = _container(
        "trainer", image, "script/train.py", env, _resources(profile.trainer.resources, profile, spec.use_gpu)
    )
    volumes = _llm_volumes(profile, container, shm=False) if profile.llm else []
    if profile.llm and not profile.llm.qlora_on_gpu:
        container["env"].append({"name": QLORA_ENV, "value": "false"})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job_name(spec.task_id), labels, request),
        "spec": {
            "backoffLimit": profile.trainer.backoff_limit,
            "activeDeadlineSeconds": profile.trainer.active_deadline_seconds,
            "ttlSecondsAfterFinished": profile.trainer.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": labels},
                "spec": _pod_spec([container], profile, spec.use_gpu, restartPolicy="Never", volumes=volumes),
            },
        },
    }


def _http_probe(path: str, period: int, failures: int, initial_delay: int = 0) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT_NAME},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def inference_deployment(
    spec: ServeSpec,
    profile: ModelProfile,
    use_gpu: bool,
    replicas: int,
    request: dict[str, Any],
    refs: ClusterRefs = ClusterRefs(),
    rollout: dict[str, Any] | None = None,
    canary_revision: int | None = None,
) -> dict[str, Any]:
    """The apps/v1 Deployment that runs script/serve.py for one model. `rollout` is the revision
    history (app/core/revisions.py); its newest revision labels the pods. With `canary_revision`,
    the canary's Deployment instead: that revision's model, under the canary's name and labels
    (it records no history: the stable Deployment does)."""
    assert profile.inference is not None
    kind = KIND_INFERENCE if canary_revision is None else KIND_CANARY
    name = inference_name(spec.model_id) if canary_revision is None else canary_name(spec.model_id)
    labels = _labels(kind, spec.task_id, profile.name, spec.model_id)
    port = profile.inference.port
    env = [
        {"name": SERVE_SPEC_ENV, "value": spec.model_dump_json()},
        {"name": SERVE_PORT_ENV, "value": str(port)},
        *_env_from_cluster(refs),
    ]
    # A language model on GPUs takes one per tensor-parallel rank.
    gpus = profile.llm.vllm.tensor_parallel_size if profile.llm else None
    image = profile.inference.image if use_gpu else profile.inference.cpu_image or profile.inference.image
    container = _container(
        "server", image, "script/serve.py", env,
        _resources(profile.inference.resources, profile, use_gpu, gpu_count=gpus),
    )
    volumes: list[dict[str, Any]] = []
    if profile.llm:
        # serve.py fetches the model, then runs vLLM's OpenAI server with these arguments (its CPU
        # build or its CUDA build, whichever the image has; script/llm_server.py).
        container["args"] = profile.llm.engine_args(use_gpu)
        volumes = _llm_volumes(profile, container, shm=True)
    container["ports"] = [{"name": HTTP_PORT_NAME, "containerPort": port, "protocol": "TCP"}]
    # Loading a model can take minutes (a language model's download, much longer): the startup
    # probe holds the others back until the server answers, which it does once weights are loaded.
    startup_failures = 360 if profile.llm else 60
    container["startupProbe"] = _http_probe(LIVENESS_PATH, period=STARTUP_PERIOD_SECONDS, failures=startup_failures)
    container["readinessProbe"] = _http_probe(profile.inference.readiness_path, period=5, failures=3)
    container["livenessProbe"] = _http_probe(LIVENESS_PATH, period=10, failures=3)
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}}
    drain = LLM_DRAIN_SECONDS if profile.llm else DRAIN_SECONDS
    selector = task_selector(kind, spec.task_id)
    metadata = _metadata(name, labels, request, spec.served_model_name)
    revision = canary_revision or (rollout or {}).get("revision", 1)
    if rollout is not None and canary_revision is None:
        metadata["annotations"][ANNOTATION_ROLLOUT] = json.dumps(rollout, sort_keys=True, separators=(",", ":"))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "minReadySeconds": MIN_READY_SECONDS,
            "progressDeadlineSeconds": STARTUP_PERIOD_SECONDS * startup_failures + PROGRESS_MARGIN_SECONDS,
            "template": {
                # Prometheus finds the model server's /metrics (vLLM's own, for a language model) by these.
                "metadata": {"labels": {**labels, LABEL_REVISION: str(revision)},
                             "annotations": scrape_annotations(port)},
                "spec": _pod_spec([container], profile, use_gpu, volumes=volumes,
                                  terminationGracePeriodSeconds=PRESTOP_SLEEP_SECONDS + drain),
            },
        },
    }


def scrape_annotations(port: int, path: str = "/metrics") -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": path}


def inference_service(spec: ServeSpec, profile: ModelProfile, request: dict[str, Any], canary: bool = False
                      ) -> dict[str, Any]:
    """The v1 Service in front of the model's pods (or the canary's); the predict proxy targets it."""
    assert profile.inference is not None
    kind = KIND_CANARY if canary else KIND_INFERENCE
    name = canary_name(spec.model_id) if canary else inference_name(spec.model_id)
    labels = _labels(kind, spec.task_id, profile.name, spec.model_id)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, labels, request, spec.served_model_name),
        "spec": {
            "type": "ClusterIP",
            "selector": task_selector(kind, spec.task_id),
            "ports": [{"name": HTTP_PORT_NAME, "port": SERVICE_PORT, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}],
        },
    }


# vLLM's queue length per pod, as a metrics adapter (e.g. prometheus-adapter) names vLLM's
# `vllm:num_requests_waiting` for the custom metrics API.
WAITING_REQUESTS_METRIC = "vllm_num_requests_waiting"


def inference_autoscaler(spec: ServeSpec, profile: ModelProfile, request: dict[str, Any],
                         autoscaling: dict[str, Any]) -> dict[str, Any]:
    """The autoscaling/v2 HorizontalPodAutoscaler of the model's Deployment (`autoscaling` is the
    API's Autoscaling, camelCase): CPU utilisation, and vLLM's waiting requests where asked."""
    name = inference_name(spec.model_id)
    metrics: list[dict[str, Any]] = [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": autoscaling.get("targetCpuUtilization", 70)}}}]
    if autoscaling.get("targetWaitingRequests"):
        metrics.append({"type": "Pods", "pods": {"metric": {"name": WAITING_REQUESTS_METRIC}, "target": {
            "type": "AverageValue", "averageValue": str(autoscaling["targetWaitingRequests"])}}})
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, _labels(KIND_INFERENCE, spec.task_id, profile.name, spec.model_id), request),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": autoscaling.get("minReplicas", 1),
            "maxReplicas": autoscaling["maxReplicas"],
            "metrics": metrics,
        },
    }


def served_model_name_of(obj: dict[str, Any]) -> str | None:
    """The language model's served name an inference object records, if any."""
    return (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_SERVED_MODEL)


def request_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The request an object was created from, read back from its annotation."""
    raw = (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_REQUEST)
    return orjson.loads(raw) if raw else {}


def rollout_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The revision history an inference Deployment records, if any."""
    raw = (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_ROLLOUT)
    return orjson.loads(raw) if raw else None


def revision_of(pod: dict[str, Any]) -> int | None:
    """The revision a pod (or a Deployment's pod template) serves."""
    value = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_REVISION)
    return int(value) if value and value.isdigit() else None
