"""The metrics that describe state rather than requests: tasks by status, endpoints, replicas and
training durations, read from the runtime when Prometheus scrapes (app/metrics.py)."""

import asyncio

from prometheus_client.core import GaugeMetricFamily, Metric

from app.core.blocking import run_blocking
from app.core.manifests import KIND_INFERENCE, KIND_TRAINING
from app.metrics import count_by, durations_histogram, seconds_between
from app.runtime.base import Runtime
from app.schemas.inference import DeploymentStatus
from app.schemas.training import TrainingStatus


async def state_families(runtime: Runtime) -> list[Metric]:
    trainings, deployments = await asyncio.gather(run_blocking(runtime.list, KIND_TRAINING),
                                                  run_blocking(runtime.list, KIND_INFERENCE))
    endpoints = [runtime.endpoints.get(task_id) for task_id in runtime.endpoints.task_ids()]
    replicas = GaugeMetricFamily("mlops_deployment_replicas", "Model-server replicas of each deployment: "
                                 "desired, and ready (passing their readiness probe)",
                                 labels=["task_id", "model_id", "state"])
    for state in deployments:
        model_id = str(state.request.get("modelId", ""))
        replicas.add_metric([state.task_id, model_id, "desired"], int(state.request.get("replicas", 1)))
        replicas.add_metric([state.task_id, model_id, "ready"], state.ready_replicas or 0)
    succeeded = [(str(s.request.get("modelProfile", "")), seconds_between(s.created_at, s.completion_time))
                 for s in trainings if s.phase == TrainingStatus.SUCCEEDED]
    return [
        count_by("mlops_training_tasks", "Training tasks by status", "status", (s.phase for s in trainings),
                 [status.value for status in TrainingStatus]),
        count_by("mlops_deployments", "Deployments by status", "status", (s.phase for s in deployments),
                 [status.value for status in DeploymentStatus]),
        count_by("mlops_endpoints", "Inference endpoints as the API routes them", "state",
                 ("ready" if e.ready else "not_ready" for e in endpoints if e is not None), ["ready", "not_ready"]),
        replicas,
        durations_histogram("mlops_training_time_to_succeeded_seconds",
                            "From the training request to Succeeded, over the tasks the API holds now",
                            "model_profile", ((p, s) for p, s in succeeded if s is not None)),
    ]
