"""The Kubernetes objects the API emits, for every profile in model_profiles.yaml, with and without GPU.

Every object is valid against the official OpenAPI schemas of Kubernetes 1.30, 1.31, 1.32, 1.33 and
1.34 (kubernetes-validate, strict: no unknown fields), the range of clusters this platform supports;
and follows the platform's rules: GPU placement, Pod Security "restricted" on every pod, requests and
limits on every container, labels and the request annotation, DNS-1123 names, no inline secrets.

The objects come from the API itself (`?dryRun=true` on the Kubernetes runtime), so what is tested
is exactly what a cluster would receive; a dry run makes no Kubernetes API call.
"""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from app.core.manifests import (
    LABEL_MANAGED_BY,
    LABEL_MODEL_ID,
    LABEL_NAME,
    LABEL_PROFILE,
    LABEL_TASK_ID,
    LABEL_TASK_KIND,
    MANAGED_BY,
    request_of,
)
from app.core.names import MAX_ID_LENGTH, MAX_NAME_LENGTH
from app.main import create_app
from app.profiles import ModelProfile, load_profiles
from app.runtime.kubernetes import KubernetesRuntime
from app.settings import PROJECT_ROOT, Settings
from models import HANDLERS
from tests.fake_kube import FakeKube

KUBERNETES_VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34")
PROFILES_FILE = PROJECT_ROOT / "model_profiles.yaml"
PROFILES = load_profiles(PROFILES_FILE, known_handlers=set(HANDLERS))
TOKEN = "manifest-tests-admin-token"
RUN_ID = "0123456789abcdef0123456789abcdef"
# Credentials in the API's own environment must never be copied into an object.
SECRET_VALUES = {"AWS_ACCESS_KEY_ID": "sentinel-access-key-id-4821", "AWS_SECRET_ACCESS_KEY": "sentinel-secret-4821"}
CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL", re.IGNORECASE)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Volume types Pod Security "restricted" allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


@dataclass(frozen=True)
class Emitted:
    """What the API emits for one profile, with or without GPU (a profile may only train, or only serve)."""

    profile: ModelProfile
    use_gpu: bool
    train_request: dict[str, Any] | None
    train_objects: list[dict[str, Any]]
    deploy_request: dict[str, Any] | None
    deploy_objects: list[dict[str, Any]]

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [*self.train_objects, *self.deploy_objects]

    def tasks(self) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        """(kind, request, objects) of each task emitted."""
        made = [("training", self.train_request, self.train_objects), ("inference", self.deploy_request,
                                                                         self.deploy_objects)]
        return [(kind, request, objects) for kind, request, objects in made if request is not None]

    def __str__(self) -> str:
        return f"{self.profile.name}{' with GPU' if self.use_gpu else ''}"


def slug(profile: ModelProfile, use_gpu: bool) -> str:
    return f"{profile.name.replace('_', '-')}{'-gpu' if use_gpu else ''}"


def model_reference(profile: ModelProfile) -> str:
    """A model a language-model profile allows (its first pattern, made concrete)."""
    assert profile.llm is not None and profile.llm.allowed_model_references, profile.name
    return profile.llm.allowed_model_references[0].replace("*", "base-model")


def train_request(profile: ModelProfile, use_gpu: bool, task_id: str | None = None) -> dict[str, Any]:
    request = {"taskId": task_id or f"train-{slug(profile, use_gpu)}", "experimentName": "manifests",
               "modelProfile": profile.name, "datasetPath": "s3://datasets/train.csv", "useGpu": use_gpu}
    if profile.llm is not None:
        request["initialModelFilePath"] = model_reference(profile)
    return request


def deploy_request(profile: ModelProfile, use_gpu: bool, model_id: str | None = None) -> dict[str, Any]:
    request = {"taskId": f"deploy-{slug(profile, use_gpu)}", "modelId": model_id or f"model-{slug(profile, use_gpu)}",
               "modelProfile": profile.name, "useGpu": use_gpu}
    if profile.llm is not None:
        request["modelReference"] = model_reference(profile)
    else:
        request["mlflowRunId"] = RUN_ID
    return request


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake


def dry_run_client(fake: FakeKube, profiles_file: Path) -> TestClient:
    """The API on the Kubernetes runtime; its lifespan is not run, so only dry runs can succeed."""
    settings = Settings(runtime="kubernetes", mlflow_uri="http://127.0.0.1:9", namespace=fake.namespace,
                        api_tokens=f"admin:{TOKEN}", profiles_path=profiles_file)
    runtime = KubernetesRuntime(fake.api_client(), fake.namespace)
    return TestClient(create_app(settings, runtime=runtime), headers={"Authorization": f"Bearer {TOKEN}"})


def dry_run(client: TestClient, path: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    answer = client.post(path, params={"dryRun": "true"}, json=request)
    assert answer.status_code == 200, answer.text
    return answer.json()["manifests"]


def emit(client: TestClient, profile: ModelProfile, use_gpu: bool, train_id: str | None = None,
         model_id: str | None = None) -> Emitted:
    training = train_request(profile, use_gpu, train_id) if profile.trainer is not None else None
    serving = deploy_request(profile, use_gpu, model_id) if profile.inference is not None else None
    return Emitted(
        profile, use_gpu,
        training, dry_run(client, "/api/v1/train/jobs", training) if training else [],
        serving, dry_run(client, "/api/v1/inference/deployments", serving) if serving else [],
    )


@pytest.fixture(scope="module")
def emitted(fake: FakeKube) -> list[Emitted]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in SECRET_VALUES.items():
            env.setenv(name, value)
        client = dry_run_client(fake, PROFILES_FILE)
        return [emit(client, profile, use_gpu) for profile in PROFILES.values() for use_gpu in (False, True)]


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [obj["spec"]["template"]["spec"]] if obj["kind"] in ("Job", "Deployment") else []


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def test_every_profile_emits_a_job_and_a_deployment_with_its_service(emitted: list[Emitted]) -> None:
    assert {e.profile.name for e in emitted} == set(PROFILES) and len(emitted) == 2 * len(PROFILES)
    for case in emitted:
        assert [o["kind"] for o in case.train_objects] == (["Job"] if case.profile.trainer else []), case
        assert [o["kind"] for o in case.deploy_objects] == (
            ["Deployment", "Service"] if case.profile.inference else []
        ), case
    assert any(case.train_objects for case in emitted) and any(case.deploy_objects for case in emitted)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_the_supported_kubernetes_versions(emitted: list[Emitted], version: str) -> None:
    for case in emitted:
        for obj in case.objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{case}: {obj['kind']} {obj['metadata']['name']} is not valid for {version}: {error}")


def test_gpu_pods_ask_for_the_profiles_gpus_and_land_on_gpu_nodes(emitted: list[Emitted]) -> None:
    for case in emitted:
        gpu = case.profile.gpu
        for obj in case.objects:
            for pod in pod_specs(obj):
                for container in pod["containers"]:
                    resources = container["resources"]
                    if case.use_gpu:
                        assert resources["limits"][gpu.resource_name] == str(gpu.count), case
                        # Extended resources: a request, if given, must equal the limit.
                        assert resources["requests"].get(gpu.resource_name, str(gpu.count)) == str(gpu.count), case
                    else:
                        assert gpu.resource_name not in resources.get("limits", {}), case
                        assert gpu.resource_name not in resources.get("requests", {}), case
                if case.use_gpu:
                    assert pod.get("runtimeClassName") == gpu.runtime_class_name, case
                    wanted = [t.model_dump(exclude_none=True) for t in gpu.tolerations]
                    assert all(t in pod.get("tolerations", []) for t in wanted), case
                    assert pod.get("nodeSelector", {}) == dict(gpu.node_selector), case
                else:
                    assert "runtimeClassName" not in pod and "tolerations" not in pod, case
                    assert "nodeSelector" not in pod, case


def test_a_profiles_gpu_node_selector_reaches_the_gpu_pods(fake: FakeKube, tmp_path: Path) -> None:
    raw = yaml.safe_load(PROFILES_FILE.read_text())
    for profile in raw["profiles"].values():
        profile.setdefault("gpu", {})["node_selector"] = {"nvidia.com/gpu.present": "true"}
    profiles_file = tmp_path / "profiles.yaml"
    profiles_file.write_text(yaml.safe_dump(raw))
    client = dry_run_client(fake, profiles_file)
    for profile in load_profiles(profiles_file, known_handlers=set(HANDLERS)).values():
        with_gpu, without = emit(client, profile, True), emit(client, profile, False)
        for obj in with_gpu.objects:
            for pod in pod_specs(obj):
                assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, with_gpu
        assert all("nodeSelector" not in pod for obj in without.objects for pod in pod_specs(obj)), without


def test_every_pod_meets_pod_security_restricted_and_sizes_every_container(emitted: list[Emitted]) -> None:
    for case in emitted:
        for obj in case.objects:
            for pod in pod_specs(obj):
                where = f"{case}: {obj['kind']} {obj['metadata']['name']}"
                pod_security = pod.get("securityContext", {})
                assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), where
                for volume in pod.get("volumes", []):
                    assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, f"{where}: volume {volume}"
                for container in containers(pod):
                    security = container.get("securityContext", {})
                    assert security.get("allowPrivilegeEscalation") is False, where
                    assert "ALL" in security.get("capabilities", {}).get("drop", []), where
                    assert set(security.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
                    assert not security.get("privileged"), where
                    assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
                    assert security.get("runAsUser", pod_security.get("runAsUser", 1)) != 0, where
                    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
                    assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
                    for kind in ("requests", "limits"):
                        assert {"cpu", "memory"} <= set(container["resources"].get(kind, {})), f"{where}: {kind}"


def test_objects_carry_the_task_labels_and_the_request_it_came_from(emitted: list[Emitted]) -> None:
    for case in emitted:
        for kind, request, objects in case.tasks():
            for obj in objects:
                where = f"{case}: {obj['kind']}"
                templates = [obj["spec"]["template"]["metadata"]["labels"]] if pod_specs(obj) else []
                for labels in [obj["metadata"]["labels"], *templates]:
                    assert labels[LABEL_MANAGED_BY] == MANAGED_BY and labels[LABEL_NAME], where
                    assert (labels[LABEL_TASK_ID], labels[LABEL_TASK_KIND]) == (request["taskId"], kind), where
                    assert labels[LABEL_PROFILE] == case.profile.name, where
                    if kind == "inference":
                        assert labels[LABEL_MODEL_ID] == request["modelId"], where
                    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values()), where
                stored = request_of(obj)
                assert {key: stored.get(key) for key in request} == request, where
            # One request per task, on every object of it.
            assert len({json.dumps(request_of(obj), sort_keys=True) for obj in objects}) == 1, case
        if not case.deploy_objects:
            continue
        deployment, service = case.deploy_objects
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), case
        assert service["spec"]["selector"].items() <= pod_labels.items(), case


def test_names_come_from_the_ids_and_are_dns_labels_at_the_longest_ids(fake: FakeKube) -> None:
    client = dry_run_client(fake, PROFILES_FILE)
    longest_task, longest_model = "t" * MAX_ID_LENGTH, "m" * MAX_ID_LENGTH
    for profile in PROFILES.values():
        case = emit(client, profile, False, train_id=longest_task, model_id=longest_model)
        assert [job["metadata"]["name"] for job in case.train_objects] == (
            [f"train-{longest_task}"] if profile.trainer else []
        )
        assert [obj["metadata"]["name"] for obj in case.deploy_objects] == (
            [f"infer-{longest_model}"] * 2 if profile.inference else []
        )
        for obj in case.objects:
            name = obj["metadata"]["name"]
            assert len(name) <= MAX_NAME_LENGTH and DNS_LABEL.match(name), name
    trainable = next(profile for profile in PROFILES.values() if profile.trainer is not None)
    too_long = client.post("/api/v1/train/jobs", params={"dryRun": "true"},
                           json=train_request(trainable, False, "t" * (MAX_ID_LENGTH + 1)))
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "taskId"


def test_credentials_are_only_referenced_from_secrets(emitted: list[Emitted]) -> None:
    for case in emitted:
        text = json.dumps(case.objects)
        assert not any(value in text for value in SECRET_VALUES.values()), case
        for obj in case.objects:
            for pod in pod_specs(obj):
                for container in containers(pod):
                    for item in container.get("env", []):
                        if CREDENTIAL_NAME.search(item["name"]):
                            assert "value" not in item, f"{case}: {item['name']} is inline"
                            assert "secretKeyRef" in item["valueFrom"], f"{case}: {item['name']}"
                    assert "envFrom" not in container or all("secretRef" in s or "configMapRef" in s
                                                             for s in container["envFrom"]), case


def test_a_dry_run_calls_no_kubernetes_api(fake: FakeKube, emitted: list[Emitted]) -> None:
    assert emitted and fake.calls == []
