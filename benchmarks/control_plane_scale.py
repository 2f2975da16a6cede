"""The control plane as work grows: 1,000 training tasks and 200 deployments on the Kubernetes runtime
(against the HTTP fake of the Kubernetes API in a process of its own, benchmarks/fake_cluster.py, whose
controller loop runs and ends the Jobs and makes the Deployments available), and 200 training tasks on
the local runtime; the API is `python -m app` with one worker, as a user starts it.

Measured: the create rate, list p50/p99 (every task at once, and a page of 100), status p50, the API's
resident memory per task, the Kubernetes API calls per list and per status, and the same status, list and
predict figures again with 50 log followers open. The peer in the same run is the Kubernetes API itself:
its list of the same Jobs (what `kubectl get jobs` reads), timed the same way.

    python -m benchmarks.control_plane_scale [--tasks 1000] [--deployments 200] [--local-tasks 200]

It prints a Markdown section for docs/benchmarks.md.
"""

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from app import embedded_mlflow
from benchmarks.fake_cluster import NAMESPACE
from benchmarks.load import run_wrk
from benchmarks.processes import Server, free_port, tree_rss_mib

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCALE_DOC = PROJECT_ROOT / "docs" / "benchmarks-scale.md"
INTRO = """## The control plane at scale

Written by `python -m benchmarks.control_plane_scale` (about 15 minutes; `--only kubernetes|local` reruns one
part and keeps the other, `--tasks`, `--deployments`, `--local-tasks` change the counts). The API is
`python -m app` with one worker (`MLOPS_WORKERS=1`), MLflow the embedded server on SQLite, all on this
machine's two cores. On the Kubernetes runtime the cluster is the HTTP fake of the Kubernetes API
(tests/fake_kube) in a process of its own, `benchmarks/fake_cluster.py`, whose loop plays the Job and
Deployment controllers: each Job's pod runs for a second, then succeeds (one in ten fails); each Deployment
gets a ready pod. Each training task gets the MLflow run its trainer would make (tagged, with a metric).
Latencies are one client's, calls one after another; creates come from 8 clients at once. Reads per list
and per status are the get and list calls the fake served meanwhile (watches are long-lived streams, not
reads). Resident memory is the API process's; per task is its growth from empty over the tasks created,
which counts what Python's allocator keeps of the burst of creates too: what the object cache itself
holds is about 4 KiB per task (tracemalloc; tests/test_kubernetes_lists.py keeps it under 4 KiB).
The peer is the Kubernetes API itself (the fake here): its own list of the same Jobs, as `kubectl get jobs`
reads it. Log followers are `follow=true` streams held open by 50 clients on deployments' logs."""
TRAIN = "/api/v1/train/jobs"
DEPLOY = "/api/v1/inference/deployments"
CREATORS = 8  # clients creating tasks at once
FOLLOWERS = 50
PREDICT_BODY = {"data": {"features": [[0.1 * i for i in range(8)]]}}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Timing:
    p50_ms: float
    p99_ms: float
    calls: int

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms ({self.calls} calls)"


def timed(call: Callable[[], httpx.Response], times: int) -> Timing:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        answer = call()
        seconds.append(time.perf_counter() - started)
        answer.raise_for_status()
    ms = [s * 1000 for s in seconds]
    return Timing(percentile(ms, 50), percentile(ms, 99), times)


def create_all(url: str, bodies: list[tuple[str, dict[str, Any]]]) -> tuple[float, Timing]:
    """POST every body with CREATORS clients at once: tasks per second, and each call's latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    local = threading.local()

    def create(item: tuple[str, dict[str, Any]]) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=60)
        path, body = item
        started = time.perf_counter()
        answer = local.client.post(path, json=body)
        took = time.perf_counter() - started
        if answer.status_code != 201:
            raise RuntimeError(f"POST {path} answered {answer.status_code}: {answer.text[:300]}")
        with lock:
            latencies.append(took * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(create, bodies))
    rate = len(bodies) / (time.perf_counter() - started)
    return rate, Timing(percentile(latencies, 50), percentile(latencies, 99), len(latencies))


def wait_for(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@contextlib.contextmanager
def followers(url: str, paths: list[str]) -> Iterator[list[int]]:
    """Log streams held open (follow=true) on `paths`, each by its own client; yields their statuses
    once every one has its answer's headers."""
    statuses: list[int] = []
    opened = threading.Barrier(len(paths) + 1)
    stop = threading.Event()

    def follow(path: str) -> None:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=None)) as client, \
                client.stream("GET", path, params={"follow": "true"}) as answer:
            statuses.append(answer.status_code)
            opened.wait()
            for _ in answer.iter_raw():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=follow, args=(path,), daemon=True) for path in paths]
    for thread in threads:
        thread.start()
    opened.wait(timeout=120)
    try:
        yield statuses
    finally:
        stop.set()  # the streams end with the process's clients when the threads see data or exit


class Api:
    def __init__(self, work: Path, name: str, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = Server(name, [sys.executable, "-m", "app"], self.url + "/readyz",
                             {"MLOPS_PORT": str(self.port), "MLOPS_WORKERS": "1",
                              "MLOPS_AUTH_DISABLED": "true", "MLOPS_DATA_DIR": str(work / f"{name}-data"), **env},
                             PROJECT_ROOT, work / f"{name}.log")
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def start(self) -> "Api":
        # os.environ is the base of Server's environment: the API sees only what is set here.
        saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith(("MLOPS_", "KUBE"))}
        try:
            self.server.start(timeout=240)
        finally:
            os.environ.update(saved)
        return self

    def rss_mib(self) -> float:
        return tree_rss_mib(self.server.process.pid) if self.server.process else float("nan")

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


class FakeCluster:
    def __init__(self, work: Path):
        self.kubeconfig = work / "kubeconfig"
        self.calls_url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fake_cluster", "--kubeconfig", str(self.kubeconfig),
             "--calls-port", self.calls_url.rsplit(":", 1)[1]],
            cwd=PROJECT_ROOT, stdout=open(work / "fake-cluster.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        wait_for("the fake cluster", lambda: self.kubeconfig.exists() and self._answers(), 60)

    def _answers(self) -> bool:
        try:
            return httpx.get(self.calls_url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def reads(self) -> int:
        """Get and list calls served so far (watches are long-lived streams, not reads)."""
        counts = httpx.get(self.calls_url, timeout=10).json()
        return sum(n for key, n in counts.items() if key.split()[0] in ("get", "list"))

    def server(self) -> str:
        import yaml

        return yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def finished_run(tracking_uri: str) -> str:
    """A FINISHED MLflow run for the deployments to name (the fake's pods never load it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("scale-bench") or client.get_experiment(
        client.create_experiment("scale-bench"))
    run = client.create_run(experiment.experiment_id)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def tagged_runs(tracking_uri: str, task_ids: list[str]) -> None:
    """What each trainer makes: a finished run tagged with its task id, with a metric (the fake's
    pods run nothing)."""
    from mlflow.tracking import MlflowClient

    from models.spec import TASK_ID_TAG

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("scale-bench")
    for task_id in task_ids:
        run = client.create_run(experiment.experiment_id, run_name=task_id, tags={TASK_ID_TAG: task_id})
        client.log_metric(run.info.run_id, "val_rmse", 1.0)
        client.set_terminated(run.info.run_id)


def training_body(task_id: str, profile: str, dataset: str, **extra: Any) -> dict[str, Any]:
    return {"taskId": task_id, "experimentName": "scale-bench", "modelProfile": profile, "datasetPath": dataset,
            "targetColumn": "price", "hyperparameters": {"numEpoch": 1}, **extra}


def figures(api: Api, kind_path: str, ids: list[str], status_path: Callable[[str], str],
            reads: Callable[[], int] | None, label: str) -> dict[str, Any]:
    """List (all, and a page of 100) and status latencies, and the Kubernetes reads each made."""
    rng = random.Random(1)
    result: dict[str, Any] = {}
    # The first list after the tasks ended looks each one's MLflow run up once (then kept).
    result["first list"] = timed(lambda: api.client.get(kind_path), 1)
    before = reads() if reads else 0
    result["list all"] = timed(lambda: api.client.get(kind_path), 30)
    result["kube reads per list"] = (reads() - before) / 30 if reads else None
    result["list page of 100"] = timed(lambda: api.client.get(kind_path, params={"limit": 100}), 50)
    before = reads() if reads else 0
    result["status"] = timed(lambda: api.client.get(status_path(rng.choice(ids))), 200)
    result["kube reads per status"] = (reads() - before) / 200 if reads else None
    print(f"{label}: " + "; ".join(f"{k}: {v}" for k, v in result.items()), flush=True)
    return result


def kubernetes_section(work: Path, tracking_uri: str, tasks: int, deployments: int) -> dict[str, Any]:
    cluster = FakeCluster(work)
    api = Api(work, "api-kubernetes", {"MLOPS_RUNTIME": "kubernetes", "MLOPS_KUBECONFIG": str(cluster.kubeconfig),
                                      "MLOPS_NAMESPACE": NAMESPACE, "MLOPS_MLFLOW_URI": tracking_uri}).start()
    out: dict[str, Any] = {"tasks": tasks, "deployments": deployments}
    try:
        rss_empty = api.rss_mib()
        train_ids = [f"train-{i:04d}" for i in range(tasks)]
        profiles = ("tabular_regression", "tabular_classification", "tabular_regression_sklearn")
        bodies = [(TRAIN, training_body(t, profiles[i % 3], "s3://datasets/houses.csv"))
                  for i, t in enumerate(train_ids)]
        out["train create rate"], out["train create"] = create_all(api.url, bodies)
        run_id = finished_run(tracking_uri)
        tagged_runs(tracking_uri, train_ids)
        deploy_ids = [f"deploy-{i:04d}" for i in range(deployments)]
        bodies = [(DEPLOY, {"taskId": d, "modelId": f"model-{i:04d}", "mlflowRunId": run_id,
                            "modelProfile": "tabular_regression_sklearn"}) for i, d in enumerate(deploy_ids)]
        out["deploy create rate"], out["deploy create"] = create_all(api.url, bodies)
        print(f"created: {out['train create rate']:.0f} trainings/s ({out['train create']}), "
              f"{out['deploy create rate']:.0f} deployments/s ({out['deploy create']})", flush=True)

        def settled() -> bool:
            running = api.client.get(TRAIN, params={"status": "Running"}).json()["items"]
            pending = api.client.get(TRAIN, params={"status": "Pending"}).json()["items"]
            ready = api.client.get(DEPLOY, params={"status": "Ready"}).json()["items"]
            return not running and not pending and len(ready) == deployments

        wait_for("every Job to end and every Deployment to be available", settled, 600)
        out["rss empty MiB"], out["rss MiB"] = rss_empty, api.rss_mib()
        out["train"] = figures(api, TRAIN, train_ids, lambda t: f"{TRAIN}/{t}/status", cluster.reads,
                               f"kubernetes, {tasks} trainings")
        out["deploy"] = figures(api, DEPLOY, deploy_ids, lambda d: f"{DEPLOY}/{d}", cluster.reads,
                                f"kubernetes, {deployments} deployments")
        out["rss after reads MiB"] = api.rss_mib()
        # The peer: the Kubernetes API's own list of the same Jobs, as kubectl reads it.
        jobs = f"{cluster.server()}/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
        with httpx.Client(headers={"Authorization": "Bearer bench-token"}, timeout=60) as kube:
            selector = {"labelSelector": "mlops.dev/task-kind=training"}
            out["kube list jobs"] = timed(lambda: kube.get(jobs, params=selector), 30)
        print(f"peer: the Kubernetes API's list of the Jobs: {out['kube list jobs']}", flush=True)
        with followers(api.url, [f"{DEPLOY}/{d}/logs" for d in deploy_ids[:FOLLOWERS]]) as statuses:
            out["follower statuses"] = sorted(set(statuses))
            out["train with followers"] = figures(api, TRAIN, train_ids, lambda t: f"{TRAIN}/{t}/status", None,
                                                  f"kubernetes with {FOLLOWERS} log followers")
    finally:
        api.stop()
        cluster.stop()
    return out


def local_section(work: Path, tracking_uri: str, tasks: int, batch: int) -> dict[str, Any]:
    dataset = work / "houses.csv"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])
    frame["price"] = x @ np.arange(1, 9) + 3
    frame.to_csv(dataset, index=False)
    api = Api(work, "api-local", {"MLOPS_RUNTIME": "local", "MLOPS_MLFLOW_URI": tracking_uri}).start()
    out: dict[str, Any] = {"tasks": tasks}
    try:
        rss_empty = api.rss_mib()
        ids = [f"local-{i:04d}" for i in range(tasks)]
        rates = []
        # A local task is a process on this machine: created a batch at a time, each batch left to finish.
        for start in range(0, tasks, batch):
            chunk = ids[start:start + batch]
            rate, _ = create_all(api.url, [(TRAIN, training_body(t, "tabular_regression_sklearn", str(dataset),
                                                                 customModelName="scale-local"))
                                           for t in chunk])
            rates.append(rate)

            def finished(chunk: list[str] = chunk) -> bool:
                return all(api.client.get(f"{TRAIN}/{t}/status").json()["status"] in ("Succeeded", "Failed")
                           for t in chunk)

            wait_for(f"local batch {start // batch + 1} to finish", finished, 600)
        out["create rate"] = statistics.median(rates)
        out["rss empty MiB"], out["rss MiB"] = rss_empty, api.rss_mib()
        out["train"] = figures(api, TRAIN, ids, lambda t: f"{TRAIN}/{t}/status", None, f"local, {tasks} trainings")
        # Predict throughput through the API, then again with FOLLOWERS log streams open.
        run_id = api.client.get(f"{TRAIN}/{ids[-1]}/status").json()["mlflowRunId"]
        created = api.client.post(DEPLOY, json={"taskId": "scale-serve", "modelId": "scale-serve",
                                                "mlflowRunId": run_id, "modelProfile": "tabular_regression_sklearn"})
        created.raise_for_status()
        wait_for("the deployment to be Ready",
                 lambda: api.client.get(f"{DEPLOY}/scale-serve").json()["status"] == "Ready", 180)
        body = work / "predict.json"
        body.write_text(json.dumps(PREDICT_BODY))
        predict = f"{api.url}/api/v1/inference/scale-serve/predict"
        wait_for("predicts to answer", lambda: api.client.post(predict, json=PREDICT_BODY).status_code == 200, 60)
        out["predict"] = run_wrk(predict, body, 32, 6)
        with followers(api.url, [f"{DEPLOY}/scale-serve/logs"] * FOLLOWERS) as statuses:
            out["follower statuses"] = sorted(set(statuses))
            out["predict with followers"] = run_wrk(predict, body, 32, 6)
            out["train with followers"] = figures(api, TRAIN, ids, lambda t: f"{TRAIN}/{t}/status", None,
                                                  f"local with {FOLLOWERS} log followers")
        print(f"local predict: {out['predict'].requests / out['predict'].seconds:.0f} req/s; with {FOLLOWERS} "
              f"followers {out['predict with followers'].requests / out['predict with followers'].seconds:.0f} req/s",
              flush=True)
        api.client.delete(f"{DEPLOY}/scale-serve")
    finally:
        api.stop()
    return out


def run_line(started: str, load: str) -> str:
    return (f"- run: {started}, `python -m benchmarks.control_plane_scale`; machine: {os.cpu_count()} cores, "
            f"{platform.platform()}; load average (1, 5, 15 min) before: {load}")


def kubernetes_part(k8s: dict[str, Any], started: str, load: str) -> str:
    lines = [f"### Kubernetes runtime, {k8s['tasks']} training tasks and {k8s['deployments']} deployments", "",
             run_line(started, load)]
    if k8s:
        n = k8s["tasks"] + k8s["deployments"]
        per_task = (k8s["rss MiB"] - k8s["rss empty MiB"]) * 1024 / n
        t, d = k8s["train"], k8s["deploy"]
        lines += [
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| create rate, trainings ({CREATORS} clients) | {k8s['train create rate']:.0f}/s (p50 "
            f"{k8s['train create'].p50_ms:.1f} ms, p99 {k8s['train create'].p99_ms:.1f} ms) |",
            f"| create rate, deployments ({CREATORS} clients) | {k8s['deploy create rate']:.0f}/s (p50 "
            f"{k8s['deploy create'].p50_ms:.1f} ms) |",
            f"| list of {k8s['tasks']} trainings, all at once | p50 {t['list all'].p50_ms:.1f} ms, p99 "
            f"{t['list all'].p99_ms:.1f} ms (the first after they ended, which finds their MLflow runs: "
            f"{t['first list'].p50_ms:.0f} ms) |",
            f"| list of trainings, a page of 100 | p50 {t['list page of 100'].p50_ms:.1f} ms, p99 "
            f"{t['list page of 100'].p99_ms:.1f} ms |",
            f"| training status | p50 {t['status'].p50_ms:.2f} ms, p99 {t['status'].p99_ms:.2f} ms |",
            f"| list of {k8s['deployments']} deployments | p50 {d['list all'].p50_ms:.1f} ms, p99 "
            f"{d['list all'].p99_ms:.1f} ms |",
            f"| deployment status | p50 {d['status'].p50_ms:.2f} ms |",
            f"| Kubernetes API reads per list / per status | {t['kube reads per list']:.2f} / "
            f"{t['kube reads per status']:.2f} (deployments: {d['kube reads per list']:.2f} / "
            f"{d['kube reads per status']:.2f}) |",
            f"| API resident memory | {k8s['rss empty MiB']:.0f} MiB empty, {k8s['rss MiB']:.0f} MiB with the tasks, "
            f"{k8s['rss after reads MiB']:.0f} MiB after the reads: **{per_task:.1f} KiB per task** |",
            f"| peer: the Kubernetes API's own list of the {k8s['tasks']} Jobs | p50 "
            f"{k8s['kube list jobs'].p50_ms:.1f} ms, p99 {k8s['kube list jobs'].p99_ms:.1f} ms |",
            f"| with {FOLLOWERS} log followers open (answers {k8s['follower statuses']}): training status, list | p50 "
            f"{k8s['train with followers']['status'].p50_ms:.2f} ms, list p50 "
            f"{k8s['train with followers']['list all'].p50_ms:.1f} ms |",
        ]
    return "\n".join(lines)


def local_part(local: dict[str, Any], started: str, load: str) -> str:
    lines = [f"### Local runtime, {local['tasks']} training tasks", "", run_line(started, load)]
    if local:
        per_task = (local["rss MiB"] - local["rss empty MiB"]) * 1024 / local["tasks"]
        t = local["train"]
        p, pf = local["predict"], local["predict with followers"]
        lines += [
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| create rate (a batch at a time) | {local['create rate']:.0f}/s |",
            f"| list of {local['tasks']} trainings, all at once | p50 {t['list all'].p50_ms:.1f} ms, p99 "
            f"{t['list all'].p99_ms:.1f} ms (the first: {t['first list'].p50_ms:.0f} ms) |",
            f"| list, a page of 100 | p50 {t['list page of 100'].p50_ms:.1f} ms |",
            f"| training status | p50 {t['status'].p50_ms:.2f} ms, p99 {t['status'].p99_ms:.2f} ms |",
            f"| API resident memory | {local['rss empty MiB']:.0f} MiB empty, {local['rss MiB']:.0f} MiB with the "
            f"tasks: {per_task:.1f} KiB per task |",
            f"| predict through the API, c=32 | {p.requests / p.seconds:,.0f} req/s, p50 {p.p50_ms:.2f} ms |",
            f"| the same with {FOLLOWERS} log followers open (answers {local['follower statuses']}) | "
            f"{pf.requests / pf.seconds:,.0f} req/s, p50 {pf.p50_ms:.2f} ms; training status p50 "
            f"{local['train with followers']['status'].p50_ms:.2f} ms |",
        ]
    return "\n".join(lines)


PARTS = ("kubernetes", "local")


def write_docs(parts: dict[str, str]) -> None:
    """docs/benchmarks-scale.md with the parts this run measured and the others as they were, and
    the same at the end of docs/benchmarks.md (benchmarks/report.py keeps it there too)."""
    old = SCALE_DOC.read_text() if SCALE_DOC.exists() else ""
    for name in PARTS:
        if name not in parts and f"<!-- {name} -->" in old:
            parts[name] = old.split(f"<!-- {name} -->")[1].split(f"<!-- /{name} -->")[0].strip()
    text = "\n\n".join([INTRO, *(f"<!-- {n} -->\n{parts[n]}\n<!-- /{n} -->" for n in PARTS if n in parts)]) + "\n"
    SCALE_DOC.write_text(text)
    main_doc = SCALE_DOC.parent / "benchmarks.md"
    kept = main_doc.read_text().split(INTRO.splitlines()[0])[0].rstrip()
    main_doc.write_text(f"{kept}\n\n{text}")
    print(f"wrote {SCALE_DOC} and its section of {main_doc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--local-tasks", type=int, default=200)
    parser.add_argument("--local-batch", type=int, default=10, help="local tasks run at once")
    parser.add_argument("--only", choices=PARTS, help="measure one runtime; the other's figures stay as they were")
    parser.add_argument("--no-write", action="store_true", help="print the figures, change no document")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mlops-scale-") as tmp:
        work = Path(tmp)
        tracking_uri, mlflow = embedded_mlflow.start(work / "mlflow", free_port())
        try:
            k8s = kubernetes_section(work, tracking_uri, args.tasks, args.deployments) \
                if args.only != "local" else None
            local = local_section(work, tracking_uri, args.local_tasks, args.local_batch) \
                if args.only != "kubernetes" else None
        finally:
            if mlflow is not None:
                embedded_mlflow.stop(mlflow)
        load = " ".join(f"{v:.2f}" for v in load_before)
        parts = {}
        if k8s:
            parts["kubernetes"] = kubernetes_part(k8s, started, load)
        if local:
            parts["local"] = local_part(local, started, load)
        for part in parts.values():
            print("\n" + part)
        if not args.no_write:
            write_docs(parts)


if __name__ == "__main__":
    main()
