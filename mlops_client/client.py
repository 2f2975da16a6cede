"""A typed client for every route of the control plane.

    from mlops_client import Client
    api = Client()  # MLOPS_API_URL / MLOPS_API_TOKEN, or ~/.config/mlops/config.yaml, or http://127.0.0.1:8000
    task = api.train({"taskId": "house-1", "experimentName": "houses", "modelProfile": "tabular_regression_sklearn",
                      "datasetPath": "data/houses.csv", "targetColumn": "price"})
    task = api.wait_for_training("house-1")
    api.deploy("house-api", model_id="houses", mlflow_run_id=task.mlflow_run_id,
               model_profile="tabular_regression_sklearn")
    api.wait_for_deployment("house-api")
    api.predict("house-api", [[1200, 3, 2]])  # {"predictions": [...]}

Errors are the exceptions of mlops_client.errors (InvalidSpec carries the field); a 503 with
Retry-After is retried (`retries` times) for reads, predicts and waits.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from pydantic.alias_generators import to_camel

from mlops_client.config import resolve
from mlops_client.errors import ApiUnreachable, NotReady, error_from
from mlops_client.models import (
    ApiModel,
    DeletedTask,
    DeploymentTask,
    DryRunResult,
    Revision,
    TrainingTask,
)

Model = TypeVar("Model", bound=ApiModel)
TRAIN = "/api/v1/train/jobs"
DEPLOY = "/api/v1/inference/deployments"
MAX_RETRY_WAIT = 30.0  # seconds: a longer Retry-After is waited this long at most


def _body(fields: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as the API's camelCase body, without the ones left out."""
    return {to_camel(name): value for name, value in fields.items() if value is not None}


class Client:
    def __init__(self, api_url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 retries: int = 3, transport: httpx.BaseTransport | None = None, page_size: int = 500):
        connection = resolve(api_url, token)
        self.page_size = page_size  # tasks per list call: no answer grows with the cluster
        self.api_url = connection.api_url
        self.token = connection.token
        self.retries = retries
        headers = {"User-Agent": "mlops-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- the one way a request is made -------------------------------------------------------

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """One call; an error answer raises its MlopsError. With `retry`, a 503 is tried again after
        its Retry-After (at most `retries` times)."""
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ApiUnreachable(f"cannot reach the API at {self.api_url}: {exc}") from exc
            if response.is_success:
                return response
            error = error_from(response)
            if not (retry and isinstance(error, NotReady) and attempt < self.retries):
                raise error
            time.sleep(min(error.retry_after or 1.0, MAX_RETRY_WAIT))
        raise AssertionError("unreachable")

    def _get(self, path: str, model: type[Model], **params: Any) -> Model:
        return model.model_validate(self.request("GET", path, params=_body(params) or None).json())

    def _send(self, method: str, path: str, model: type[Model], body: dict[str, Any] | None = None,
              dry_run: bool = False) -> Model | DryRunResult:
        params = {"dryRun": "true"} if dry_run else None
        answer = self.request(method, path, json=body, params=params, retry=False).json()
        return DryRunResult.model_validate(answer) if dry_run else model.model_validate(answer)

    # -- training ----------------------------------------------------------------------------

    def train(self, body: dict[str, Any] | None = None, **fields: Any) -> TrainingTask:
        """Start a training task: the specification's body (camelCase keys, e.g. from a YAML file),
        with keyword arguments (snake_case) added over it. 201 new, 200 the same request again."""
        request = {**(body or {}), **_body(fields)}
        return TrainingTask.model_validate(self.request("POST", TRAIN, json=request, retry=False).json())

    def training(self, task_id: str) -> TrainingTask:
        return self._get(f"{TRAIN}/{task_id}/status", TrainingTask)

    def trainings(self, status: str | None = None, profile: str | None = None) -> list[TrainingTask]:
        """Every training task (of that status and profile, if given), read a page at a time."""
        return [TrainingTask.model_validate(item) for item in self._pages(TRAIN, status, profile)]

    def training_logs(self, task_id: str, tail: int | None = None) -> str:
        return self.request("GET", f"{TRAIN}/{task_id}/logs", params=_body({"tail": tail}) or None).text

    def follow_training_logs(self, task_id: str, tail: int | None = None) -> Iterator[str]:
        """The trainer's output line by line as it comes, until the job ends."""
        return self._follow(f"{TRAIN}/{task_id}/logs", tail)

    def delete_training(self, task_id: str) -> DeletedTask:
        return DeletedTask.model_validate(self.request("DELETE", f"{TRAIN}/{task_id}", retry=False).json())

    def wait_for_training(self, task_id: str, timeout: float | None = None, poll: float = 1.0,
                          on_update: Callable[[TrainingTask], None] | None = None) -> TrainingTask:
        """The task once Succeeded or Failed (see .status); `on_update` sees every status read."""
        return self._wait(lambda: self.training(task_id), lambda task: task.finished, timeout, poll, on_update,
                          f"training task '{task_id}' to finish")

    # -- deployments -------------------------------------------------------------------------

    def deploy(self, task_id: str, model_id: str, model_profile: str, *, mlflow_run_id: str | None = None,
               model_name: str | None = None, model_version: str | None = None, model_alias: str | None = None,
               model_reference: str | None = None, use_gpu: bool | None = None,
               replicas: int | None = None) -> DeploymentTask:
        """Deploy one model: an MLflow run, a registered model by version or alias, or (language
        models) a model reference. 201 new, 200 the same request again."""
        body = _body({"task_id": task_id, "model_id": model_id, "model_profile": model_profile,
                      "mlflow_run_id": mlflow_run_id, "model_name": model_name, "model_version": model_version,
                      "model_alias": model_alias, "model_reference": model_reference, "use_gpu": use_gpu,
                      "replicas": replicas})
        return DeploymentTask.model_validate(self.request("POST", DEPLOY, json=body, retry=False).json())

    def deployment(self, task_id: str) -> DeploymentTask:
        return self._get(f"{DEPLOY}/{task_id}", DeploymentTask)

    def deployments(self, status: str | None = None, profile: str | None = None) -> list[DeploymentTask]:
        """Every deployment (of that status and profile, if given), read a page at a time."""
        return [DeploymentTask.model_validate(item) for item in self._pages(DEPLOY, status, profile)]

    def deployment_logs(self, task_id: str, tail: int | None = None) -> str:
        return self.request("GET", f"{DEPLOY}/{task_id}/logs", params=_body({"tail": tail}) or None).text

    def follow_deployment_logs(self, task_id: str, tail: int | None = None) -> Iterator[str]:
        return self._follow(f"{DEPLOY}/{task_id}/logs", tail)

    def update_deployment(self, task_id: str, *, dry_run: bool = False, **changes: Any
                          ) -> DeploymentTask | DryRunResult:
        """PATCH: a new model (mlflow_run_id, or model_name with model_version / model_alias, or
        model_reference) makes a new revision; replicas, autoscaling (a dict), promote_alias."""
        return self._send("PATCH", f"{DEPLOY}/{task_id}", DeploymentTask, _body(changes), dry_run)

    def revisions(self, task_id: str) -> list[Revision]:
        items = self.request("GET", f"{DEPLOY}/{task_id}/revisions").json()["items"]
        return [Revision.model_validate(item) for item in items]

    def rollback(self, task_id: str, revision: int | None = None, promote_alias: str | None = None,
                 dry_run: bool = False) -> DeploymentTask | DryRunResult:
        body = _body({"revision": revision, "promote_alias": promote_alias})
        return self._send("POST", f"{DEPLOY}/{task_id}/rollback", DeploymentTask, body, dry_run)

    def start_canary(self, task_id: str, traffic_percent: int, *, auto_abort: bool | dict[str, Any] = False,
                     dry_run: bool = False, **model: Any) -> DeploymentTask | DryRunResult:
        """A second revision (`model`: mlflow_run_id=, model_name= with model_version= or
        model_alias=, model_reference=) taking `traffic_percent` of the predicts."""
        body = {**_body(model), "trafficPercent": traffic_percent, "autoAbort": auto_abort}
        return self._send("POST", f"{DEPLOY}/{task_id}/canary", DeploymentTask, body, dry_run)

    def set_canary_weight(self, task_id: str, traffic_percent: int, dry_run: bool = False
                          ) -> DeploymentTask | DryRunResult:
        return self._send("PATCH", f"{DEPLOY}/{task_id}/canary", DeploymentTask, {"trafficPercent": traffic_percent},
                          dry_run)

    def promote_canary(self, task_id: str, promote_alias: str | None = "champion", dry_run: bool = False
                       ) -> DeploymentTask | DryRunResult:
        return self._send("POST", f"{DEPLOY}/{task_id}/canary/promote", DeploymentTask,
                          {"promoteAlias": promote_alias}, dry_run)

    def abort_canary(self, task_id: str, dry_run: bool = False) -> DeploymentTask | DryRunResult:
        return self._send("DELETE", f"{DEPLOY}/{task_id}/canary", DeploymentTask, None, dry_run)

    def delete_deployment(self, task_id: str) -> DeletedTask:
        return DeletedTask.model_validate(self.request("DELETE", f"{DEPLOY}/{task_id}", retry=False).json())

    def wait_for_deployment(self, task_id: str, timeout: float | None = None, poll: float = 1.0,
                            on_update: Callable[[DeploymentTask], None] | None = None) -> DeploymentTask:
        """The deployment once its newest revision serves (Ready), or it cannot: the deployment
        Failed, or the newest revision failed while an earlier one keeps serving (see .message)."""

        def settled(deployment: DeploymentTask) -> bool:
            if deployment.status == "Failed":
                return True
            if deployment.serving_revision in (None, deployment.revision):
                return deployment.status == "Ready"
            # An earlier revision serves while the newest starts: it settles when that one fails.
            newest = self.revisions(task_id)[:1]
            return bool(newest) and newest[0].revision == deployment.revision and newest[0].state == "Failed"

        return self._wait(lambda: self.deployment(task_id), settled, timeout, poll, on_update,
                          f"deployment '{task_id}' to serve its newest revision")

    # -- the data plane ----------------------------------------------------------------------

    def predict(self, task_id: str, features: list[list[Any]] | None = None, *, data: dict[str, Any] | None = None,
                user_id: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """The model's answer for `features` (one row per prediction), or for `data` as the model
        takes it (a language model: {"prompt": ...} or {"messages": [...]})."""
        body: dict[str, Any] = {"data": data if data is not None else {"features": features}}
        if user_id is not None:
            body["userId"] = user_id
        headers = {"X-Request-ID": request_id} if request_id else None
        return self.request("POST", f"/api/v1/inference/{task_id}/predict", json=body, headers=headers).json()

    def openai_base_url(self, task_id: str) -> str:
        return f"{self.api_url}/api/v1/inference/{task_id}/v1"

    def openai(self, task_id: str, **options: Any) -> Any:
        """The official openai client, pointed at a language-model deployment (model: its modelId)."""
        import openai

        return openai.OpenAI(base_url=self.openai_base_url(task_id), api_key=self.token or "none", **options)

    # -- helpers -----------------------------------------------------------------------------

    def _pages(self, path: str, status: str | None, profile: str | None) -> Iterator[dict[str, Any]]:
        params = {key: value for key, value in (("status", status), ("profile", profile)) if value is not None}
        params["limit"] = str(self.page_size)
        while True:
            page = self.request("GET", path, params=params).json()
            yield from page["items"]
            if not page.get("continue"):
                return
            params["continue"] = page["continue"]

    def _follow(self, path: str, tail: int | None) -> Iterator[str]:
        params = {"follow": "true", **({"tail": str(tail)} if tail is not None else {})}
        try:
            with self._http.stream("GET", path, params=params, timeout=httpx.Timeout(30.0, read=None)) as response:
                if not response.is_success:
                    response.read()
                    raise error_from(response)
                yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"the log stream from {self.api_url} broke: {exc}") from exc

    @staticmethod
    def _wait(read: Callable[[], Model], done: Callable[[Model], bool], timeout: float | None, poll: float,
              on_update: Callable[[Model], None] | None, what: str) -> Model:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = read()
            if on_update is not None:
                on_update(current)
            if done(current):
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(poll)
