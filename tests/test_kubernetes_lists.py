"""Status and lists on a cluster come from the watch-fed object cache: once it has listed the
cluster, no read calls the Kubernetes API, and what it answers is what the API itself would."""

import contextlib
import tracemalloc
from collections import Counter
from typing import Any

from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from app.core.manifests import KIND_INFERENCE, KIND_TRAINING, LABEL_TASK_ID
from app.core.names import job_name
from app.main import create_app
from app.runtime.kubernetes import KubernetesRuntime
from app.runtime.kubernetes.api import DEPLOYMENTS, JOBS, PODS
from app.runtime.kubernetes.object_cache import ObjectCache, Watched
from app.settings import Settings
from models.spec import TASK_ID_TAG
from tests.fake_kube import FakeKube
from tests.fake_kube import pods as pod_status
from tests.fake_kube.runtime import caught_up, make_runtime
from tests.fake_kube.tasks import inference_task, training_task
from tests.mlflow_proxy import TrackingProxy
from tests.support import wait_until

ADMIN = {"Authorization": "Bearer lists-admin-token"}


def reads(fake: FakeKube, mark: int) -> list[tuple[str, str]]:
    """The API calls that read objects since `mark` (a watch resuming after its timeout is not one)."""
    return [(call.verb, call.resource) for call in fake.calls_since(mark) if call.verb in ("get", "list")]


def a_cluster_at_work(fake: FakeKube, runtime: Any) -> None:
    """Training tasks in every phase (one unschedulable, told by an event) and deployments pending,
    ready and crashing."""
    for i in range(12):
        runtime.create(KIND_TRAINING, f"train-{i:02d}", training_task(f"train-{i:02d}")[1])
    fake.start_job(job_name("train-01"))
    fake.start_job(job_name("train-02"))
    fake.complete_job(job_name("train-02"))
    fake.start_job(job_name("train-03"))
    fake.fail_job(job_name("train-03"), termination_message="KeyError: 'price'")
    pod = fake.add_pod("jobs", job_name("train-04"), {"phase": "Pending"})
    fake.add_event(fake.get("pods", pod), "FailedScheduling", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    for i, profile in enumerate(("tabular_regression", "tabular_regression", "tabular_classification")):
        runtime.create(KIND_INFERENCE, f"deploy-{i}", inference_task(f"deploy-{i}", f"model-{i}", profile)[1])
    fake.make_deployment_available("infer-model-0")
    fake.add_pod("deployments", "infer-model-1", pod_status.waiting("CrashLoopBackOff", "back-off restarting"))


def test_status_and_lists_call_no_kubernetes_api_and_answer_as_the_api_would(fake: FakeKube, loop) -> None:
    runtime = make_runtime(fake)
    loop.run(runtime.start())
    try:
        a_cluster_at_work(fake, runtime)
        caught_up(runtime, fake)
        mark = fake.mark()
        cached = {kind: runtime.list(kind) for kind in (KIND_TRAINING, KIND_INFERENCE)}
        single = {(kind, s.task_id): runtime.get(kind, s.task_id) for kind, states in cached.items() for s in states}
        assert reads(fake, mark) == []
        assert len(cached[KIND_TRAINING]) == 12 and len(cached[KIND_INFERENCE]) == 3
        # The same answers as reading the API itself (the cache's slim objects lose nothing read).
        for (kind, task_id), state in single.items():
            assert state == runtime.get(kind, task_id, fresh=True), task_id
        phases = {s.task_id: (s.phase, s.message) for s in cached[KIND_TRAINING]}
        assert phases["train-01"][0] == "Running" and phases["train-02"][0] == "Succeeded"
        assert phases["train-03"][0] == "Failed" and "KeyError: 'price'" in phases["train-03"][1]
        assert phases["train-04"] == ("Pending", "FailedScheduling: 0/1 nodes are available: 1 Insufficient "
                                                 "nvidia.com/gpu.")
        assert {s.task_id: s.phase for s in cached[KIND_INFERENCE]} == \
            {"deploy-0": "Ready", "deploy-1": "Failed", "deploy-2": "Pending"}
        # A change made by the cluster reaches the next read through the watch, still with no call.
        fake.complete_job(job_name("train-01"))
        mark = fake.mark()
        wait_until(lambda: runtime.get(KIND_TRAINING, "train-01").phase == "Succeeded", 5, 0.01,
                   "the watch to bring the Job's completion")
        assert reads(fake, mark) == []
    finally:
        loop.run(runtime.close())


def test_before_the_cache_has_listed_the_cluster_reads_go_to_the_api(fake: FakeKube) -> None:
    runtime = make_runtime(fake)  # not started: no watch, nothing cached
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    mark = fake.mark()
    assert [s.task_id for s in runtime.list(KIND_TRAINING)] == ["train-a"]
    assert ("list", "jobs") in reads(fake, mark)


def test_the_list_routes_page_and_filter_with_no_kubernetes_call(fake: FakeKube, mlflow_uri: str) -> None:
    runtime = KubernetesRuntime(fake.api_client(), fake.namespace, watch_retry_delay_seconds=0.05)
    settings = Settings(runtime="kubernetes", mlflow_uri=mlflow_uri, namespace=fake.namespace,
                        api_tokens=f"admin:{ADMIN['Authorization'].split()[1]}")
    with TestClient(create_app(settings, runtime=runtime)) as client:
        a_cluster_at_work(fake, runtime)
        caught_up(runtime, fake)
        mark = fake.mark()
        seen: list[str] = []
        query: dict[str, Any] = {"limit": 5}
        while True:
            page = client.get("/api/v1/train/jobs", params=query, headers=ADMIN)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [item["taskId"] for item in body["items"]]
            if body["continue"] is None:
                assert body["remainingItemCount"] is None
                break
            assert len(body["items"]) == 5 and body["remainingItemCount"] == 12 - len(seen)
            query["continue"] = body["continue"]
        assert seen == [f"train-{i:02d}" for i in range(12)]
        # Without limit: everything, as before pages existed.
        everything = client.get("/api/v1/train/jobs", headers=ADMIN).json()
        assert len(everything["items"]) == 12 and everything["continue"] is None
        failed = client.get("/api/v1/train/jobs", params={"status": "Failed"}, headers=ADMIN).json()["items"]
        assert [item["taskId"] for item in failed] == ["train-03"]
        classifiers = client.get("/api/v1/inference/deployments", params={"profile": "tabular_classification"},
                                 headers=ADMIN).json()["items"]
        assert [item["taskId"] for item in classifiers] == ["deploy-2"]
        ready = client.get("/api/v1/inference/deployments", params={"status": "Ready", "limit": 1},
                           headers=ADMIN).json()
        assert [item["taskId"] for item in ready["items"]] == ["deploy-0"] and ready["continue"] is None
        for task_id in ("train-00", "train-03"):
            assert client.get(f"/api/v1/train/jobs/{task_id}/status", headers=ADMIN).status_code == 200
        assert reads(fake, mark) == []

        # Bad paging or filters: 422 naming the parameter, as every refused request does.
        for params, field in (({"limit": 0}, "limit"), ({"status": "Done"}, "status"),
                              ({"profile": "no_such_profile"}, "profile"), ({"continue": "garbage"}, "continue")):
            refused = client.get("/api/v1/train/jobs", params=params, headers=ADMIN)
            assert refused.status_code == 422, (params, refused.text)
            assert refused.json()["error"]["field"] == field, refused.text
        token = client.get("/api/v1/train/jobs", params={"limit": 1, "status": "Pending"}, headers=ADMIN).json()
        replayed = client.get("/api/v1/train/jobs", params={"limit": 1, "continue": token["continue"]}, headers=ADMIN)
        error = replayed.json()["error"]
        assert replayed.status_code == 422 and error["field"] == "continue" and "filters" in error["message"]


def test_an_older_version_of_an_object_never_replaces_a_newer_one() -> None:
    """The answer to the runtime's own create can reach the cache after the watch brought the
    object's next change (its pod became ready): the cache keeps the newer one."""
    cache = ObjectCache(api=None, watched=[Watched(DEPLOYMENTS)])  # type: ignore[arg-type]

    def version(uid: str, resource_version: str, ready: int) -> dict[str, Any]:
        return {"metadata": {"name": "infer-m", "uid": uid, "resourceVersion": resource_version,
                             "labels": {LABEL_TASK_ID: "deploy-m"}}, "spec": {"replicas": 1},
                "status": {"readyReplicas": ready}}

    cache.observe(DEPLOYMENTS, version("uid-1", "12", ready=1))  # from the watch
    cache.observe(DEPLOYMENTS, version("uid-1", "11", ready=0))  # the create's answer, late
    (kept,) = cache.objects(DEPLOYMENTS, "deploy-m")
    assert (kept["metadata"]["resourceVersion"], kept["status"]["readyReplicas"]) == ("12", 1)
    cache.observe(DEPLOYMENTS, version("uid-2", "3", ready=0))  # deleted and made again: another object
    (kept,) = cache.objects(DEPLOYMENTS, "deploy-m")
    assert kept["metadata"]["uid"] == "uid-2"


def test_a_list_asks_mlflow_once_per_experiment_and_an_ended_tasks_run_is_kept(
    fake: FakeKube, mlflow_uri: str
) -> None:
    tracking = TrackingProxy(mlflow_uri)
    runtime = KubernetesRuntime(fake.api_client(), fake.namespace, watch_retry_delay_seconds=0.05)
    settings = Settings(runtime="kubernetes", mlflow_uri=tracking.uri, namespace=fake.namespace,
                        api_tokens=f"admin:{ADMIN['Authorization'].split()[1]}")
    mlflow = MlflowClient(mlflow_uri)
    try:
        with TestClient(create_app(settings, runtime=runtime)) as client:
            ids = [f"listed-{i:02d}" for i in range(20)]
            for task_id in ids:
                body = {"taskId": task_id, "experimentName": "lists-batched", "modelProfile": "tabular_regression",
                        "customModelName": "lists-batched", "datasetPath": "s3://datasets/houses.csv"}
                assert client.post("/api/v1/train/jobs", json=body, headers=ADMIN).status_code == 201
            # What each trainer would have made: a run tagged with its task, a registered version.
            experiment = mlflow.get_experiment_by_name("lists-batched") or mlflow.get_experiment(
                mlflow.create_experiment("lists-batched"))
            runs = {}
            for task_id in ids[:15]:
                run = mlflow.create_run(experiment.experiment_id, tags={TASK_ID_TAG: task_id})
                mlflow.log_metric(run.info.run_id, "val_rmse", 1.5)
                mlflow.set_terminated(run.info.run_id)
                runs[task_id] = run.info.run_id
            with contextlib.suppress(Exception):
                mlflow.create_registered_model("lists-batched")
            mlflow.create_model_version("lists-batched", f"runs:/{runs['listed-03']}/model", runs["listed-03"])
            for task_id in ids:
                fake.start_job(job_name(task_id))
                fake.complete_job(job_name(task_id))
            caught_up(runtime, fake)

            before = len(tracking.paths)
            items = client.get("/api/v1/train/jobs", headers=ADMIN).json()["items"]
            asked = tracking.paths[before:]
            assert [item["status"] for item in items] == ["Succeeded"] * 20
            assert {item["taskId"]: item["mlflowRunId"] for item in items if item["mlflowRunId"]} == runs
            (registered,) = [item for item in items if item["registeredModelVersion"]]
            assert (registered["taskId"], registered["registeredModelVersion"]) == ("listed-03", "1")
            assert all(item["metrics"] == {"val_rmse": 1.5} for item in items if item["mlflowRunId"])
            # One lookup of the experiment, its runs' searches (since the oldest task, then all: the
            # fake cluster's clock is in 2030), one search of the registered versions; each may be
            # tried twice by MLflow's client on a busy machine. Asking per task would be 20 or more.
            calls = Counter(asked)
            assert set(calls) <= {"/api/2.0/mlflow/experiments/get-by-name", "/api/2.0/mlflow/runs/search",
                                  "/api/2.0/mlflow/model-versions/search"}, asked
            assert calls["/api/2.0/mlflow/runs/search"] <= 4 and len(asked) <= 8, asked
            # Ended tasks' runs are kept, found or not: no more calls for the list or a status.
            before = len(tracking.paths)
            assert len(client.get("/api/v1/train/jobs", headers=ADMIN).json()["items"]) == 20
            assert client.get("/api/v1/train/jobs/listed-19/status", headers=ADMIN).json()["mlflowRunId"] is None
            assert tracking.paths[before:] == []
    finally:
        tracking.close()


def test_the_cache_keeps_a_few_kib_per_task(fake: FakeKube) -> None:
    """A training task's Job and pod, as a cluster holds them once it ended, cost the cache a few
    KiB (slim JSON at its own length), not the ~30 KiB of the objects as Python dicts."""
    for i in range(100):
        task_id = f"train-{i:03d}"
        fake.create("jobs", training_task(task_id)[1][0])
        fake.start_job(job_name(task_id))
        fake.complete_job(job_name(task_id))
    jobs, pods = fake.list("jobs"), fake.list("pods")
    cache = ObjectCache(api=None, watched=[Watched(JOBS), Watched(PODS)])  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for job, pod in zip(jobs, pods, strict=True):
            cache.observe(JOBS, job)
            cache.observe(PODS, pod)
        per_task = (tracemalloc.get_traced_memory()[0] - before) / 100
    finally:
        tracemalloc.stop()
    assert per_task < 4096, f"{per_task:.0f} bytes per task"
    assert len(cache.objects(JOBS)) == 100 and cache.objects(PODS, "train-007")[0]["status"]["phase"] == "Succeeded"


def test_deleting_one_kind_of_task_leaves_the_others_of_its_id_and_is_seen_at_once(fake: FakeKube, loop) -> None:
    """A training task and a deployment may share a task id: deleting one keeps the other in the
    cache, and what was deleted is gone from the next read of this API, before any watch event."""
    runtime = make_runtime(fake)
    loop.run(runtime.start())
    try:
        runtime.create(KIND_TRAINING, "same", training_task("same")[1])
        runtime.create(KIND_INFERENCE, "same", inference_task("same", "model-same")[1])
        fake.make_deployment_available("infer-model-same")
        caught_up(runtime, fake)
        fake.hold_watches()  # no stream the server ends comes back meanwhile
        assert runtime.delete(KIND_INFERENCE, "same")
        mark = fake.mark()
        assert runtime.get(KIND_INFERENCE, "same") is None
        training = runtime.get(KIND_TRAINING, "same")
        assert training is not None and training.task_id == "same"
        assert reads(fake, mark) == []
        assert runtime.delete(KIND_TRAINING, "same")
        assert runtime.get(KIND_TRAINING, "same") is None
        fake.release_watches()
    finally:
        loop.run(runtime.close())
