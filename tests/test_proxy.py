"""The data plane maps every upstream outcome to the status the API documents."""

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from app.runtime.base import Endpoint
from tests.dataplane_support import PROFILE, Plane, tightened
from tests.support import free_port


async def upstream_predict(request: web.Request) -> web.Response:
    body = await request.read()
    if body == b"slow":
        await asyncio.sleep(2)
    if body == b"crash":
        return web.Response(status=500, text="boom")
    if body == b"bad":
        return web.json_response({"error": {"code": "invalid_input", "message": "3 features expected"}}, status=422)
    return web.Response(body=b"echo:" + body, content_type="application/json")


def run_with_plane(test: Callable[[Plane, str], Awaitable[None]]) -> None:
    async def main() -> None:
        app = web.Application()
        app.router.add_post("/predict", upstream_predict)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        plane = Plane(tightened(timeout=0.3, max_request_bytes=64))
        try:
            await test(plane, f"http://127.0.0.1:{port}")
        finally:
            await plane.close()
            await runner.cleanup()

    asyncio.run(main())


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_ready_endpoint_gets_the_raw_bytes_and_answers_them() -> None:
    async def test(plane: Plane, url: str) -> None:
        plane.endpoints.put(Endpoint("t", url, True, PROFILE))
        response = await plane.predict("t", b'{"x":1}')
        assert (response.status_code, response.content) == (200, b'echo:{"x":1}')
        assert response.headers["content-type"].startswith("application/json")

    run_with_plane(test)


def test_model_input_errors_pass_through_with_the_model_message() -> None:
    async def test(plane: Plane, url: str) -> None:
        plane.endpoints.put(Endpoint("t", url, True, PROFILE))
        response = await plane.predict("t", b"bad")
        assert response.status_code == 422 and b"3 features expected" in response.content

    run_with_plane(test)


def test_unknown_task_not_ready_and_too_large() -> None:
    async def test(plane: Plane, url: str) -> None:
        assert (await plane.predict("ghost", b"{}")).status_code == 404
        plane.endpoints.put(Endpoint("t", url, False, PROFILE, "loading"))
        not_ready = await plane.predict("t", b"{}")
        assert not_ready.status_code == 503 and "Retry-After" in not_ready.headers
        assert error_code(not_ready) == "not_ready"
        plane.endpoints.put(Endpoint("t", url, True, PROFILE))
        too_large = await plane.predict("t", b"x" * 65)
        assert too_large.status_code == 413 and error_code(too_large) == "payload_too_large"

    run_with_plane(test)


def test_slow_model_is_504_and_crashing_model_is_502() -> None:
    async def test(plane: Plane, url: str) -> None:
        plane.endpoints.put(Endpoint("t", url, True, PROFILE))
        timeout = await plane.predict("t", b"slow")
        assert timeout.status_code == 504 and error_code(timeout) == "upstream_timeout"
        crash = await plane.predict("t", b"crash")
        assert crash.status_code == 502 and "boom" in crash.json()["error"]["message"]

    run_with_plane(test)


def test_unreachable_model_server_is_503_and_marks_the_endpoint_unready() -> None:
    async def test(plane: Plane, _: str) -> None:
        plane.endpoints.put(Endpoint("t", f"http://127.0.0.1:{free_port()}", True, PROFILE))
        response = await plane.predict("t", b"{}")
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        endpoint = plane.endpoints.get("t")
        assert endpoint is not None and not endpoint.ready

    run_with_plane(test)
