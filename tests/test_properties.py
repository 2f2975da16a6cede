"""Properties: any valid request yields objects that validate strictly; any invalid one is refused
before a manifest exists."""

import re
from types import SimpleNamespace

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.core.deployments import DeploymentService
from app.core.manifests import ClusterRefs
from app.core.names import MAX_ID_LENGTH, id_problem
from app.core.training import TrainingService
from app.errors import InvalidSpec
from app.profiles import ModelProfile, load_profiles
from app.schemas.inference import DeployRequest
from app.schemas.training import TrainRequest
from app.settings import PROJECT_ROOT
from tests.support import plan_deployment

PROFILES = load_profiles(PROJECT_ROOT / "model_profiles.yaml")
CLUSTER = SimpleNamespace(allows_local_paths=False)  # plan() only asks the runtime this
TRAINING = TrainingService(CLUSTER, PROFILES, tracking=None, refs=ClusterRefs())  # type: ignore[arg-type]
DEPLOYMENTS = DeploymentService(CLUSTER, PROFILES, tracking=None, refs=ClusterRefs())  # type: ignore[arg-type]
K8S_VERSION = "1.34.0"
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

valid_ids = st.from_regex(re.compile(rf"[a-z0-9]([-a-z0-9]{{0,{MAX_ID_LENGTH - 2}}}[a-z0-9])?"), fullmatch=True)
trainable = st.sampled_from(sorted(name for name, p in PROFILES.items() if p.trainer is not None))
servable = st.sampled_from(sorted(name for name, p in PROFILES.items() if p.inference is not None))


def hyperparameters_within(profile: ModelProfile) -> st.SearchStrategy[dict]:
    fields = {}
    for name, spec in profile.hyperparameters.items():
        if spec.type == "int":
            fields[name] = st.integers(int(spec.min if spec.min is not None else -(2**31)),
                                       int(spec.max if spec.max is not None else 2**31))
        elif spec.type == "float":
            fields[name] = st.floats(spec.min, spec.max, allow_nan=False)
    return st.fixed_dictionaries({}, optional=fields)


@st.composite
def train_requests(draw: st.DrawFn) -> TrainRequest:
    profile = PROFILES[draw(trainable)]
    base_model = draw(st.sampled_from(["/models/base-7b", "Qwen/Qwen2.5-0.5B"])) if profile.llm else None
    return TrainRequest(
        initial_model_file_path=base_model,
        task_id=draw(valid_ids),
        experiment_name=draw(st.text(min_size=1, max_size=80)),
        model_profile=profile.name,
        custom_model_name=draw(st.none() | st.text(min_size=1, max_size=60)),
        dataset_path="s3://" + draw(st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}/[\w./-]{1,40}", fullmatch=True)),
        target_column=None if profile.llm else draw(st.none() | st.text(min_size=1, max_size=30)),
        use_gpu=draw(st.booleans()),
        hyperparameters=draw(hyperparameters_within(profile)),
    )


def validate_strictly(objects: list[dict]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@FAST
@given(valid_ids)
def test_every_valid_id_is_accepted(value: str) -> None:
    assert id_problem(value) is None


@FAST
@given(st.text(max_size=80).filter(lambda v: not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", v)
                                   or len(v) > MAX_ID_LENGTH))
def test_every_invalid_id_is_refused_before_a_manifest_exists(value: str) -> None:
    assert id_problem(value) is not None
    with pytest.raises(ValidationError) as error:
        TrainRequest.model_validate({"taskId": value, "experimentName": "e", "modelProfile": "tabular_regression",
                                     "datasetPath": "s3://b/k.csv"})
    assert error.value.errors()[0]["loc"] == ("taskId",)


@FAST
@given(train_requests())
def test_any_valid_train_request_yields_a_job_that_validates_strictly(request: TrainRequest) -> None:
    normalized, manifests = TRAINING.plan(request)
    validate_strictly(manifests)
    (job,) = manifests
    assert job["metadata"]["labels"]["mlops.dev/task-id"] == request.task_id
    assert normalized["hyperparameters"].keys() == PROFILES[request.model_profile].hyperparameters.keys()


@FAST
@given(task_id=valid_ids, model_id=valid_ids, profile=servable, use_gpu=st.booleans(),
       replicas=st.none() | st.integers(1, 64), run_id=st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
def test_any_valid_deploy_request_yields_objects_that_validate_strictly(task_id, model_id, profile, use_gpu,
                                                                        replicas, run_id) -> None:
    request = DeployRequest(task_id=task_id, model_id=model_id, mlflow_run_id=run_id, model_profile=profile,
                            use_gpu=use_gpu, replicas=replicas)
    _, manifests = plan_deployment(DEPLOYMENTS, request)
    validate_strictly(manifests)
    deployment, service = manifests
    assert len(deployment["metadata"]["name"]) <= 63 and len(service["metadata"]["name"]) <= 63
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == use_gpu


@FAST
@given(profile=trainable, name=st.sampled_from(["numEpoch", "learningRate", "numBatch"]),
       value=st.one_of(st.integers(-10**9, 0), st.integers(10**9, 10**12), st.text(max_size=5), st.booleans()))
def test_out_of_bounds_or_mistyped_hyperparameters_are_refused(profile: str, name: str, value) -> None:
    spec = PROFILES[profile].hyperparameters[name]
    if spec.check(value) is None:
        return  # a drawn value that happens to be valid for this profile
    request = TrainRequest(task_id="t", experiment_name="e", model_profile=profile, dataset_path="s3://b/k.csv",
                           initial_model_file_path="/models/base" if profile == "llm_lora" else None,
                           hyperparameters={name: value})
    with pytest.raises(InvalidSpec) as error:
        TRAINING.plan(request)
    assert error.value.field == f"hyperparameters.{name}"
