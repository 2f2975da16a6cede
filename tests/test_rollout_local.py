"""Day 2 on the local runtime: deploy from the registry, update, roll back, and a model that cannot
load, all under steady load through the control plane with no answer other than 200."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from app.settings import PROJECT_ROOT
from models.spec import TRAIN_SPEC_ENV, TrainSpec
from tests.support import regression_csv, wait_until
from tests.test_e2e_local import SEED_PREDICT_BODY, wait_for_deployment

REGISTERED = "rollout-houses"
TASK = "deploy-rolling"
DEPLOYMENTS = "/api/v1/inference/deployments"


def train(tmp: Path, mlflow_uri: str, seed: int) -> str:
    csv = regression_csv(tmp / f"data-{seed}.csv", rows=120, seed=seed)
    spec = TrainSpec(task_id=f"rollout-train-{seed}", experiment_name="rollout", model_profile="tabular_regression",
                     handler="torch_mlp_regressor", dataset_path=str(csv), custom_model_name=REGISTERED,
                     hyperparameters={"numEpoch": 3, "learningRate": 0.01, "numBatch": 32, "hiddenUnits": 8,
                                      "hiddenLayers": 1, "validationFraction": 0.2, "seed": seed})
    env = {**os.environ, TRAIN_SPEC_ENV: spec.model_dump_json(), "MLFLOW_TRACKING_URI": mlflow_uri}
    result = subprocess.run([sys.executable, "script/train.py"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return next(json.loads(line) for line in result.stdout.splitlines() if '"run started"' in line)["runId"]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> dict[str, str]:
    """Two versions of one registered model, trained on different data (so they answer differently),
    and a finished run with no model at all (it cannot load)."""
    tmp = tmp_path_factory.mktemp("rollout")
    runs = {str(version): train(tmp, mlflow_uri, seed) for version, seed in ((1, 11), (2, 12))}
    mlflow = MlflowClient(mlflow_uri)
    assert {v.run_id: v.version for v in mlflow.search_model_versions(f"name='{REGISTERED}'")} == \
        {runs["1"]: "1", runs["2"]: "2"}
    mlflow.set_registered_model_alias(REGISTERED, "champion", "1")
    experiment = mlflow.get_experiment_by_name("rollout")
    empty = mlflow.create_run(experiment.experiment_id)
    mlflow.set_terminated(empty.info.run_id, "FINISHED")
    return {**runs, "empty": empty.info.run_id}


class Load:
    """Client threads predicting all along; every answer is kept."""

    def __init__(self, url: str, threads: int = 4):
        self.url = url
        self.answers: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                response = client.post(f"/api/v1/inference/{TASK}/predict", json=SEED_PREDICT_BODY)
                with self.lock:
                    self.answers.append((response.status_code, response.text))

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def latest(self) -> str:
        with self.lock:
            return self.answers[-1][1] if self.answers else ""

    def wait_for(self, body: str, what: str) -> None:
        mark = len(self.answers)
        wait_until(lambda: any(b == body for _, b in self.answers[mark:]) and self.latest() == body, timeout=90,
                   what=what)


def revisions(client: httpx.Client) -> list[tuple[int, str]]:
    items = client.get(f"{DEPLOYMENTS}/{TASK}/revisions").json()["items"]
    return [(item["revision"], item["state"]) for item in items]


def present(fields: dict) -> dict:
    return {key: value for key, value in fields.items() if value is not None}


def alias_version(mlflow_uri: str) -> str:
    return MlflowClient(mlflow_uri).get_model_version_by_alias(REGISTERED, "champion").version


def test_update_rollback_and_a_broken_model_under_load_answer_200_only(
        api_factory, versions: dict[str, str], mlflow_uri: str, tmp_path: Path) -> None:
    api = api_factory()
    with api.client() as client:
        created = client.post(DEPLOYMENTS, json={"taskId": TASK, "modelId": "houses-rolling", "modelName": REGISTERED,
                                                 "modelAlias": "champion", "modelProfile": "tabular_regression"})
        assert created.status_code == 201, created.text
        # The alias was resolved once, when the revision was made.
        assert present(created.json()["model"]) == {"mlflowRunId": versions["1"], "modelName": REGISTERED,
                                           "modelVersion": "1", "modelAlias": "champion"}
        wait_for_deployment(client, TASK)
        first = client.post(f"/api/v1/inference/{TASK}/predict", json=SEED_PREDICT_BODY).text
        pods = api.data_dir / "tasks" / "inference" / TASK / "pods"

        with Load(api.url) as load:
            # An update to version 2 that promotes it: rolled out, the alias follows.
            updated = client.patch(f"{DEPLOYMENTS}/{TASK}", json={"modelName": REGISTERED, "modelVersion": "2",
                                                                  "promoteAlias": "champion"})
            assert updated.status_code == 202, updated.text
            assert updated.json()["revision"] == 2 and alias_version(mlflow_uri) == "2"
            wait_until(lambda: revisions(client) == [(2, "Serving"), (1, "Retired")], timeout=90,
                       what="revision 2 to serve")
            second = wait_until(lambda: (latest := load.latest()) != first and latest, timeout=10,
                                what="version 2's answers")
            assert json.loads(second)["predictions"]
            # The old model server is stopped once drained: its memory is released.
            wait_until(lambda: sorted(p.name for p in pods.iterdir()) == ["2"], timeout=30,
                       what="revision 1's model server to stop")

            # Back to the revision before: a new revision with version 1's model; the alias goes back.
            rolled = client.post(f"{DEPLOYMENTS}/{TASK}/rollback")
            assert rolled.status_code == 202, rolled.text
            assert rolled.json()["revision"] == 3 and rolled.json()["model"]["modelVersion"] == "1"
            assert alias_version(mlflow_uri) == "1"
            load.wait_for(first, "version 1's answers again")

            # A model that cannot load: the serving revision keeps answering; the status says why.
            broken = client.patch(f"{DEPLOYMENTS}/{TASK}", json={"mlflowRunId": versions["empty"]})
            assert broken.status_code == 202, broken.text
            status = wait_until(lambda: (s := client.get(f"{DEPLOYMENTS}/{TASK}").json())["message"] and
                                "cannot start" in s["message"] and s, timeout=120, what="revision 4 to fail")
            assert status["status"] == "Ready" and status["servingRevision"] == 3 and status["revision"] == 4
            assert status["message"].startswith("revision 4 cannot start: model server exited")
            listed = client.get(f"{DEPLOYMENTS}/{TASK}/revisions").json()["items"]
            assert [(i["revision"], i["state"]) for i in listed] == [(4, "Failed"), (3, "Serving"), (2, "Retired"),
                                                                      (1, "Retired")]
            assert listed[0]["message"] and present(listed[0]["model"]) == {"mlflowRunId": versions["empty"]}
            time.sleep(1)
            assert load.latest() == first

        codes: dict[int, int] = {}
        for code, _ in load.answers:
            codes[code] = codes.get(code, 0) + 1
        assert codes.keys() == {200}, (codes, [b for c, b in load.answers if c != 200][:3])
        assert {body for _, body in load.answers} == {first, second}
        assert len(load.answers) > 50

        # Rolling back from the broken revision: to 3's model, as revision 5.
        assert client.post(f"{DEPLOYMENTS}/{TASK}/rollback", json={"revision": 2}).json()["revision"] == 5
        wait_until(lambda: revisions(client)[:2] == [(5, "Serving"), (4, "Retired")], timeout=90,
                   what="revision 5 to serve")
        assert client.post(f"/api/v1/inference/{TASK}/predict", json=SEED_PREDICT_BODY).text == second

    # The revisions are the task's: a restarted API lists them all.
    api.stop()
    with api_factory().client() as client:
        assert [r for r, _ in revisions(client)] == [5, 4, 3, 2, 1]
        assert client.get(f"{DEPLOYMENTS}/{TASK}").json()["servingRevision"] == 5


REFUSED = [
    ("PATCH", "", {}, 422, "replicas"),
    ("PATCH", "", {"mlflowRunId": "abc", "modelName": REGISTERED, "modelVersion": "1"}, 422, "modelName"),
    ("PATCH", "", {"modelVersion": "1"}, 422, "modelName"),
    ("PATCH", "", {"modelName": REGISTERED}, 422, "modelVersion"),
    ("PATCH", "", {"modelName": REGISTERED, "modelVersion": "9"}, 404, "modelVersion"),
    ("PATCH", "", {"modelName": REGISTERED, "modelAlias": "nobody"}, 404, "modelAlias"),
    ("PATCH", "", {"mlflowRunId": "0" * 32}, 404, "mlflowRunId"),
    ("PATCH", "", {"replicas": 0}, 422, "replicas"),
    ("PATCH", "", {"mlflowRunId": "x", "surprise": 1}, 422, "surprise"),
    ("PATCH", "", {"modelReference": "/models/x"}, 422, "modelReference"),
    ("POST", "/rollback", {"revision": 7}, 404, "revision"),
    ("POST", "/rollback", {}, 404, "revision"),
    ("PATCH", "", {"mlflowRunId": "VERSION-1", "promoteAlias": "champion"}, 422, "promoteAlias"),
]


def test_refused_changes_change_nothing_and_dry_runs_neither(api, versions: dict[str, str], mlflow_uri: str) -> None:
    with api.client() as client:
        created = client.post(DEPLOYMENTS, json={"taskId": TASK, "modelId": "houses-refused",
                                                 "mlflowRunId": versions["1"], "modelProfile": "tabular_regression"})
        assert created.status_code == 201
        before = client.get(f"{DEPLOYMENTS}/{TASK}/revisions").json()
        champion = alias_version(mlflow_uri)
        for method, path, body, status, field in REFUSED:
            body = {key: versions["1"] if value == "VERSION-1" else value for key, value in body.items()}
            answer = client.request(method, f"{DEPLOYMENTS}/{TASK}{path}", json=body)
            assert answer.status_code == status, (body, answer.text)
            error = answer.json()["error"]
            assert field in (error.get("field") or "") or field in error["message"], (body, error)
            assert client.get(f"{DEPLOYMENTS}/{TASK}/revisions").json() == before
        assert client.patch(f"{DEPLOYMENTS}/ghost", json={"replicas": 2}).status_code == 404

        dry = client.patch(f"{DEPLOYMENTS}/{TASK}", params={"dryRun": "true"},
                           json={"modelName": REGISTERED, "modelAlias": "champion", "replicas": 3,
                                 "promoteAlias": "champion"})
        assert dry.status_code == 200, dry.text
        deployment = dry.json()["manifests"][0]
        assert deployment["spec"]["replicas"] == 3
        assert deployment["spec"]["template"]["metadata"]["labels"]["mlops.dev/revision"] == "2"
        serve_spec = deployment["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
        assert f"models:/{REGISTERED}/{champion}" in serve_spec
        assert client.get(f"{DEPLOYMENTS}/{TASK}/revisions").json() == before
        assert client.get(f"{DEPLOYMENTS}/{TASK}").json()["replicas"] == 1
        assert alias_version(mlflow_uri) == champion


class RevisionLoad(Load):
    """Load that keeps which revision answered each predict (the X-Mlops-Revision header)."""

    def __init__(self, url: str, threads: int = 4):
        super().__init__(url, threads)
        self.revisions: list[tuple[int, str | None]] = []

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                response = client.post(f"/api/v1/inference/{TASK}/predict", json=SEED_PREDICT_BODY)
                with self.lock:
                    self.answers.append((response.status_code, response.text))
                    self.revisions.append((response.status_code, response.headers.get("x-mlops-revision")))

    def shares(self, since: int) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for _, revision in self.revisions[since:]:
            counts[revision] = counts.get(revision, 0) + 1
        return counts


def test_canary_split_promotion_and_an_aborted_canary_under_load(api_factory, versions: dict[str, str],
                                                                 mlflow_uri: str) -> None:
    MlflowClient(mlflow_uri).set_registered_model_alias(REGISTERED, "champion", "1")
    api = api_factory()
    with api.client() as client:
        assert client.post(DEPLOYMENTS, json={"taskId": TASK, "modelId": "houses-canary", "modelName": REGISTERED,
                                              "modelVersion": "1", "modelProfile": "tabular_regression"}
                           ).status_code == 201
        wait_for_deployment(client, TASK)
        with RevisionLoad(api.url) as load:
            started = client.post(f"{DEPLOYMENTS}/{TASK}/canary", json={
                "modelName": REGISTERED, "modelVersion": "2", "trafficPercent": 20})
            assert started.status_code == 202, started.text
            assert started.json()["canary"]["revision"] == 2 and started.json()["canary"]["weight"] == 20
            again = client.post(f"{DEPLOYMENTS}/{TASK}/canary", json={"mlflowRunId": versions["1"],
                                                                      "trafficPercent": 5})
            assert again.status_code == 409  # one canary at a time
            wait_until(lambda: client.get(f"{DEPLOYMENTS}/{TASK}").json()["canary"]["readyReplicas"] == 1,
                       timeout=90, what="the canary to be ready")
            wait_until(lambda: "2" in load.shares(0), timeout=30, what="a first answer from the canary")
            mark = len(load.revisions)
            wait_until(lambda: len(load.revisions) - mark >= 400, timeout=120, what="400 predicts")
            shares = load.shares(mark)
            assert set(shares) == {"1", "2"}, shares
            assert 0.10 <= shares["2"] / sum(shares.values()) <= 0.30, shares
            status = client.get(f"{DEPLOYMENTS}/{TASK}").json()
            traffic = {item["revision"]: item for item in status["traffic"]}
            assert traffic[1]["weight"] == 80 and traffic[2]["weight"] == 20
            assert traffic[2]["requests"] > 0 and traffic[2]["errorRatio"] == 0

            assert client.patch(f"{DEPLOYMENTS}/{TASK}/canary", json={"trafficPercent": 60}).status_code == 202
            assert client.get(f"{DEPLOYMENTS}/{TASK}").json()["canary"]["weight"] == 60
            listed = client.get(f"{DEPLOYMENTS}/{TASK}/revisions").json()["items"]
            assert [(i["revision"], i["state"]) for i in listed] == [(2, "Canary"), (1, "Serving")]

            promoted = client.post(f"{DEPLOYMENTS}/{TASK}/canary/promote")
            assert promoted.status_code == 202, promoted.text
            assert promoted.json()["revision"] == 2 and promoted.json()["canary"] is None
            assert alias_version(mlflow_uri) == "2"  # promotion moved the alias
            wait_until(lambda: revisions(client)[:2] == [(2, "Serving"), (1, "Retired")], timeout=60,
                       what="revision 2 to serve alone")
            time.sleep(1)
            mark = len(load.revisions)
            wait_until(lambda: len(load.revisions) - mark >= 50, timeout=60, what="50 predicts")
            assert load.shares(mark) == {"2": len(load.revisions) - mark}

            # A canary that breaks its latency threshold (every call is slower than 0.1 ms) is aborted
            # by the control plane within its window; the stable revision answers throughout.
            slow = client.post(f"{DEPLOYMENTS}/{TASK}/canary", json={
                "modelName": REGISTERED, "modelVersion": "1", "trafficPercent": 30,
                "autoAbort": {"maxP99Seconds": 0.0001, "windowSeconds": 10, "minRequests": 10}})
            assert slow.status_code == 202, slow.text
            aborted = wait_until(lambda: (items := client.get(f"{DEPLOYMENTS}/{TASK}/revisions").json()["items"])
                                 and items[0]["state"] == "Retired" and items[0]["message"] and items[0], timeout=120,
                                 what="the canary to be aborted")
            assert aborted["revision"] == 3 and "aborted by the control plane" in aborted["message"]
            assert "p99 latency" in aborted["message"]
            assert client.get(f"{DEPLOYMENTS}/{TASK}").json()["canary"] is None
        assert {code for code, _ in load.revisions} == {200}, load.shares(0)

        # An API restart during a canary keeps both revisions and the weight.
        assert client.post(f"{DEPLOYMENTS}/{TASK}/canary", json={
            "modelName": REGISTERED, "modelVersion": "1", "trafficPercent": 50}).status_code == 202
        wait_until(lambda: client.get(f"{DEPLOYMENTS}/{TASK}").json()["canary"]["readyReplicas"] == 1, timeout=90,
                   what="the new canary to be ready")
    api.stop()
    with api_factory().client() as client:
        status = wait_until(lambda: (s := client.get(f"{DEPLOYMENTS}/{TASK}").json())["canary"]["readyReplicas"]
                            and s, timeout=30, what="the canary after a restart")
        assert status["revision"] == 2 and status["canary"]["revision"] == 4 and status["canary"]["weight"] == 50
        served = {client.post(f"/api/v1/inference/{TASK}/predict", json=SEED_PREDICT_BODY).headers["x-mlops-revision"]
                  for _ in range(40)}
        assert served == {"2", "4"}


def predicts_served(pods: Path) -> dict[str, int]:
    """Predict access lines per model-server directory (pods/<revision>[-<replica>])."""
    return {pod.name: sum(1 for line in (pod / "output.log").read_text().splitlines()
                          if '"POST /predict' in line or ('"path":"/predict"' in line and '"status":200' in line))
            for pod in sorted(pods.iterdir()) if (pod / "output.log").exists()}


def test_replicas_run_that_many_servers_and_calls_are_balanced(api_factory, versions: dict[str, str]) -> None:
    api = api_factory()
    pods = api.data_dir / "tasks" / "inference" / TASK / "pods"
    with api.client() as client:
        assert client.post(DEPLOYMENTS, json={"taskId": TASK, "modelId": "houses-replicas",
                                              "mlflowRunId": versions["1"], "modelProfile": "tabular_regression"}
                           ).status_code == 201
        wait_for_deployment(client, TASK)
        with Load(api.url, threads=6) as load:
            scaled = client.patch(f"{DEPLOYMENTS}/{TASK}", json={"replicas": 3})
            assert scaled.status_code == 202 and scaled.json()["replicas"] == 3
            assert scaled.json()["revision"] == 1  # the same model: no new revision
            wait_until(lambda: client.get(f"{DEPLOYMENTS}/{TASK}").json()["readyReplicas"] == 3, timeout=90,
                       what="three ready model servers")
            before = predicts_served(pods)
            mark = len(load.answers)
            wait_until(lambda: len(load.answers) - mark >= 300, timeout=60, what="300 predicts")
            after = predicts_served(pods)
            grown = {name: after[name] - before.get(name, 0) for name in after}
            assert set(grown) == {"1", "1-1", "1-2"} and all(count > 0 for count in grown.values()), grown

            assert client.patch(f"{DEPLOYMENTS}/{TASK}", json={"replicas": 1}).status_code == 202
            wait_until(lambda: sorted(p.name for p in pods.iterdir()) == ["1"], timeout=60,
                       what="the extra model servers to stop")
            assert client.get(f"{DEPLOYMENTS}/{TASK}").json()["readyReplicas"] == 1
        assert {code for code, _ in load.answers} == {200}
