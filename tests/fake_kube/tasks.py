"""Manifests of test tasks, made by the real builders (app/core/manifests.py) from the real profiles."""

from typing import Any

from app.core.manifests import inference_autoscaler, inference_deployment, inference_service, training_job
from app.core.revisions import Rollout
from app.profiles import ModelProfile, load_profiles
from app.settings import PROJECT_ROOT
from models import HANDLERS
from models.spec import ServeSpec, TrainSpec

PROFILES: dict[str, ModelProfile] = load_profiles(PROJECT_ROOT / "model_profiles.yaml", known_handlers=set(HANDLERS))
PROFILE = "tabular_regression"
RUN_ID = "0123456789abcdef0123456789abcdef"

Manifests = list[dict[str, Any]]


def training_task(task_id: str, profile_name: str = PROFILE, **request: Any) -> tuple[dict[str, Any], Manifests]:
    """A training request (as the API stores it) and its Job."""
    profile = PROFILES[profile_name]
    body = {
        "taskId": task_id, "experimentName": "k8s-tests", "modelProfile": profile_name,
        "datasetPath": "s3://datasets/houses.csv", "trainerImage": profile.trainer.image, "useGpu": False,
        "hyperparameters": {name: spec.default for name, spec in profile.hyperparameters.items()}, **request,
    }
    spec = TrainSpec(
        task_id=task_id, experiment_name=body["experimentName"], model_profile=profile_name, handler=profile.handler,
        dataset_path=body["datasetPath"], use_gpu=body["useGpu"], hyperparameters=body["hyperparameters"],
    )
    return body, [training_job(spec, profile, body["trainerImage"], body)]


def inference_task(
    task_id: str, model_id: str, profile_name: str = PROFILE, use_gpu: bool = False, rollout: Rollout | None = None
) -> tuple[dict[str, Any], Manifests]:
    """A deploy request (as the API stores it), its Deployment and its Service, in creation order.
    With `rollout` (app/core/revisions.py), the objects of its newest revision, as an update makes
    them; without, a Deployment as made before revisions existed."""
    profile = PROFILES[profile_name]
    body = {"taskId": task_id, "modelId": model_id, "mlflowRunId": RUN_ID, "modelProfile": profile_name,
            "useGpu": use_gpu, "replicas": 1}
    run_id = (rollout.newest.model.mlflow_run_id if rollout else None) or RUN_ID
    spec = ServeSpec(
        task_id=task_id, model_id=model_id, model_uri=f"runs:/{run_id}/model", model_profile=profile_name,
        handler=profile.handler, use_gpu=use_gpu,
    )
    replicas = rollout.replicas if rollout else 1
    annotation = rollout.as_annotation() if rollout else None
    return body, [inference_deployment(spec, profile, use_gpu, replicas, body, rollout=annotation),
                  inference_service(spec, profile, body)]


def _serve_spec(task_id: str, model_id: str, profile_name: str, run_id: str) -> ServeSpec:
    profile = PROFILES[profile_name]
    return ServeSpec(task_id=task_id, model_id=model_id, model_uri=f"runs:/{run_id}/model",
                     model_profile=profile_name, handler=profile.handler, use_gpu=False)


def rollout_task(task_id: str, model_id: str, rollout: Rollout, profile_name: str = PROFILE) -> Manifests:
    """The objects of `rollout` in the order app/core/deployments.py hands them to a runtime: the
    stable revision's Deployment and Service; the canary's, while one runs; the autoscaler, when
    the replicas follow the load."""
    profile = PROFILES[profile_name]
    body = {"taskId": task_id, "modelId": model_id, "mlflowRunId": RUN_ID, "modelProfile": profile_name,
            "useGpu": False, "replicas": 1}
    stable = rollout.find(rollout.revision)
    assert stable is not None
    spec = _serve_spec(task_id, model_id, profile_name, stable.model.mlflow_run_id or RUN_ID)
    objects = [inference_deployment(spec, profile, False, rollout.replicas, body, rollout=rollout.as_annotation()),
               inference_service(spec, profile, body)]
    if rollout.canary is not None:
        canary = rollout.find(rollout.canary.revision)
        assert canary is not None
        canary_spec = _serve_spec(task_id, model_id, profile_name, canary.model.mlflow_run_id or RUN_ID)
        objects += [inference_deployment(canary_spec, profile, False, 1, body, canary_revision=canary.revision),
                    inference_service(canary_spec, profile, body, canary=True)]
    if rollout.autoscaling is not None:
        objects.append(inference_autoscaler(spec, profile, body, rollout.autoscaling))
    return objects
