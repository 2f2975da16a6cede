"""The predict proxy maps every upstream outcome to the status the API documents."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from app.core.proxy import PredictProxy
from app.errors import NotReady, PayloadTooLarge, TaskNotFound, UpstreamError, UpstreamTimeout
from app.profiles import load_profiles
from app.runtime.base import Endpoint, EndpointCache
from app.settings import PROJECT_ROOT
from tests.support import free_port

PROFILE = "tabular_regression"


async def upstream_predict(request: web.Request) -> web.Response:
    body = await request.read()
    if body == b"slow":
        await asyncio.sleep(2)
    if body == b"crash":
        return web.Response(status=500, text="boom")
    if body == b"bad":
        return web.json_response({"error": {"code": "invalid_input", "message": "3 features expected"}}, status=422)
    return web.Response(body=b"echo:" + body, content_type="application/json")


def run_with_proxy(test: Callable[[PredictProxy, EndpointCache, str], Awaitable[None]]) -> None:
    async def main() -> None:
        app = web.Application()
        app.router.add_post("/predict", upstream_predict)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        profiles = load_profiles(PROJECT_ROOT / "model_profiles.yaml")
        fast = profiles[PROFILE].inference.model_copy(update={"predict_timeout_seconds": 0.3, "max_request_bytes": 64})
        profiles[PROFILE] = profiles[PROFILE].model_copy(update={"inference": fast})
        cache = EndpointCache()
        proxy = PredictProxy(cache, profiles)
        await proxy.start()
        try:
            await test(proxy, cache, f"http://127.0.0.1:{port}")
        finally:
            await proxy.close()
            await runner.cleanup()

    asyncio.run(main())


def test_ready_endpoint_gets_the_raw_bytes_and_answers_them() -> None:
    async def test(proxy: PredictProxy, cache: EndpointCache, url: str) -> None:
        cache.put(Endpoint("t", url, True, PROFILE))
        status, body, content_type = await proxy.forward("t", "/predict", b'{"x":1}', "application/json")
        assert (status, body) == (200, b'echo:{"x":1}')
        assert content_type.startswith("application/json")

    run_with_proxy(test)


def test_model_input_errors_pass_through_with_the_model_message() -> None:
    async def test(proxy: PredictProxy, cache: EndpointCache, url: str) -> None:
        cache.put(Endpoint("t", url, True, PROFILE))
        status, body, _ = await proxy.forward("t", "/predict", b"bad", "application/json")
        assert status == 422 and b"3 features expected" in body

    run_with_proxy(test)


def test_unknown_task_not_ready_and_too_large() -> None:
    async def test(proxy: PredictProxy, cache: EndpointCache, url: str) -> None:
        with pytest.raises(TaskNotFound):
            await proxy.forward("ghost", "/predict", b"{}", "application/json")
        cache.put(Endpoint("t", url, False, PROFILE, "loading"))
        with pytest.raises(NotReady) as not_ready:
            await proxy.forward("t", "/predict", b"{}", "application/json")
        assert not_ready.value.status_code == 503 and "Retry-After" in not_ready.value.headers
        cache.put(Endpoint("t", url, True, PROFILE))
        with pytest.raises(PayloadTooLarge):
            await proxy.forward("t", "/predict", b"x" * 65, "application/json")

    run_with_proxy(test)


def test_slow_model_is_504_and_crashing_model_is_502() -> None:
    async def test(proxy: PredictProxy, cache: EndpointCache, url: str) -> None:
        cache.put(Endpoint("t", url, True, PROFILE))
        with pytest.raises(UpstreamTimeout) as timeout:
            await proxy.forward("t", "/predict", b"slow", "application/json")
        assert timeout.value.status_code == 504
        with pytest.raises(UpstreamError) as crash:
            await proxy.forward("t", "/predict", b"crash", "application/json")
        assert crash.value.status_code == 502 and "boom" in crash.value.message

    run_with_proxy(test)


def test_unreachable_model_server_is_503_and_marks_the_endpoint_unready() -> None:
    async def test(proxy: PredictProxy, cache: EndpointCache, url: str) -> None:
        cache.put(Endpoint("t", f"http://127.0.0.1:{free_port()}", True, PROFILE))
        with pytest.raises(NotReady):
            await proxy.forward("t", "/predict", b"{}", "application/json")
        endpoint = cache.get("t")
        assert endpoint is not None and not endpoint.ready

    run_with_proxy(test)
