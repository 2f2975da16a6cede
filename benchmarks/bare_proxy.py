"""A bare ASGI proxy under uvicorn (httptools, uvloop), for benchmarks/proxy_clients.py: one POST
forwarded to $BARE_UPSTREAM with the HTTP client named by $BARE_CLIENT, and nothing else (no
routing, admission, log line or metric). `constant` answers without an upstream: the server's
own floor. Runs in the benchmark's `clients` environment, where every client is installed."""

import os
from datetime import timedelta
from typing import Any

UPSTREAM = os.environ.get("BARE_UPSTREAM", "")
CLIENT = os.environ.get("BARE_CLIENT", "constant")
HEADERS = {"content-type": "application/json"}
CONSTANT = b'{"predictions":[1.0]}'


async def pyreqwest_client() -> Any:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(256).http1_only().no_proxy().build()
    timeout = timedelta(seconds=30)

    async def post(body: bytes) -> tuple[int, bytes]:
        response = await client.request("POST", UPSTREAM).headers(HEADERS).body_bytes(body).timeout(timeout) \
            .build().send()
        return response.status, bytes(await response.bytes())
    return post


async def aiohttp_client() -> Any:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), auto_decompress=False)

    async def post(body: bytes) -> tuple[int, bytes]:
        async with session.post(UPSTREAM, data=body, headers=HEADERS) as response:
            return response.status, await response.read()
    return post


async def httpx_client() -> Any:
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256))

    async def post(body: bytes) -> tuple[int, bytes]:
        response = await client.post(UPSTREAM, content=body, headers=HEADERS)
        return response.status_code, response.content
    return post


async def aiosonic_client() -> Any:
    import aiosonic

    client = aiosonic.HTTPClient()

    async def post(body: bytes) -> tuple[int, bytes]:
        response = await client.post(UPSTREAM, data=body, headers=HEADERS)
        return response.status_code, await response.content()
    return post


async def blacksheep_client() -> Any:
    from blacksheep import Content
    from blacksheep.client import ClientSession

    session = ClientSession(follow_redirects=False)

    async def post(body: bytes) -> tuple[int, bytes]:
        response = await session.post(UPSTREAM, content=Content(b"application/json", body))
        return response.status, await response.read()
    return post


async def constant_client() -> Any:
    async def post(body: bytes) -> tuple[int, bytes]:
        return 200, CONSTANT
    return post


CLIENTS = {"constant": constant_client, "pyreqwest": pyreqwest_client, "aiohttp": aiohttp_client,
           "httpx": httpx_client, "aiosonic": aiosonic_client, "blacksheep": blacksheep_client}
post: Any = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global post
    if scope["type"] != "http":
        return
    if post is None:
        post = await CLIENTS[CLIENT]()
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, payload = await post(body) if scope["path"] != "/health" else (200, b"ok")
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BARE_PORT"]), http="httptools", loop="uvloop",
                lifespan="off", access_log=False, log_level="warning")
