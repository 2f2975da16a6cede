"""The name a language model answers to travels with its endpoint: both runtimes read it from what the
deployment records, and the specification's predict route sends it as OpenAI's `model` (vLLM answers
404 to any other name, the task id included)."""

import asyncio
from types import SimpleNamespace

from aiohttp import web

from app.core.deployments import DeploymentService
from app.core.manifests import ANNOTATION_SERVED_MODEL, ClusterRefs
from app.profiles import load_profiles
from app.runtime.base import Endpoint, EndpointCache
from app.runtime.kubernetes.api import DEPLOYMENTS, SERVICES
from app.runtime.kubernetes.endpoint_watch import EndpointWatch
from app.runtime.kubernetes.object_cache import ObjectCache, Watched
from app.runtime.kubernetes.routes import ServiceDnsRoute
from app.runtime.local import LocalRuntime
from app.schemas.inference import DeployRequest
from app.settings import PROJECT_ROOT
from tests.dataplane_support import Plane
from tests.support import free_port, plan_deployment

PROFILES = load_profiles(PROJECT_ROOT / "model_profiles.yaml")


def chat_manifests(allows_local_paths: bool) -> list[dict]:
    service = DeploymentService(SimpleNamespace(allows_local_paths=allows_local_paths), PROFILES,  # type: ignore
                                tracking=None, refs=ClusterRefs())  # type: ignore[arg-type]
    _, manifests = plan_deployment(service, DeployRequest.model_validate({
        "taskId": "chat-task", "modelId": "chat-model", "modelReference": "/models/base",
        "modelProfile": "llm_chat"}))
    return manifests


def test_the_deployment_and_its_service_record_the_served_name_tabular_ones_none() -> None:
    deployment, service = chat_manifests(allows_local_paths=False)
    assert deployment["metadata"]["annotations"][ANNOTATION_SERVED_MODEL] == "chat-model"
    assert service["metadata"]["annotations"][ANNOTATION_SERVED_MODEL] == "chat-model"
    tabular = DeploymentService(SimpleNamespace(allows_local_paths=False), PROFILES, tracking=None,  # type: ignore
                                refs=ClusterRefs())  # type: ignore[arg-type]
    _, (tab_deployment, _) = plan_deployment(tabular, DeployRequest.model_validate({
        "taskId": "t", "modelId": "m", "mlflowRunId": "ab" * 16, "modelProfile": "tabular_regression"}))
    assert ANNOTATION_SERVED_MODEL not in tab_deployment["metadata"]["annotations"]


def test_the_local_runtime_endpoint_carries_the_served_name_through_probes(tmp_path) -> None:
    runtime = LocalRuntime(tmp_path / "data", {})
    runtime._put_endpoint("chat-task", {"manifests": chat_manifests(True), "ports": {"1": free_port()}}, 1, ready=False)
    endpoint = runtime.endpoints.get("chat-task")
    assert endpoint is not None and endpoint.served_model_name == "chat-model"
    runtime.endpoints.mark_unready("chat-task", "gone")  # a changed entry keeps the name
    assert runtime.endpoints.get("chat-task").served_model_name == "chat-model"


def test_the_cluster_watch_endpoint_carries_the_served_name() -> None:
    deployment, service = chat_manifests(allows_local_paths=False)
    cache = ObjectCache(api=None, watched=[Watched(DEPLOYMENTS), Watched(SERVICES)])  # type: ignore[arg-type]
    watch = EndpointWatch(cache, route=ServiceDnsRoute("mlops"), endpoints=EndpointCache())
    cache.observe(DEPLOYMENTS, deployment)
    cache.observe(SERVICES, service)
    endpoint = watch.endpoints.get("chat-task")
    assert endpoint is not None and endpoint.served_model_name == "chat-model"


def test_predict_sends_the_served_name_not_the_task_id() -> None:
    seen: list[dict] = []

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if body.get("model") != "chat-model":  # as vLLM answers a name it was not started with
            return web.json_response({"error": {"message": f"The model `{body.get('model')}` does not exist."}},
                                     status=404)
        return web.json_response({"model": "chat-model", "usage": {"completion_tokens": 1},
                                  "choices": [{"text": " fox", "finish_reason": "length"}]})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        plane = Plane(PROFILES)
        plane.endpoints.put(Endpoint("chat-task", f"http://127.0.0.1:{port}", True, "llm_chat",
                                     served_model_name="chat-model"))
        try:
            response = await plane.predict("chat-task", b'{"data": {"prompt": "the quick", "max_tokens": 1}}')
        finally:
            await plane.close()
            await runner.cleanup()
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == [" fox"]

    asyncio.run(main())
    assert seen == [{"prompt": "the quick", "max_tokens": 1, "model": "chat-model"}]
