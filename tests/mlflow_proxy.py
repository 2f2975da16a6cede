"""MLflow's REST API through a recording proxy: the calls a component makes to MLflow, counted, and
a fault a test asks for (the first lookup of an experiment by name misses it)."""

import http.server
import json
import threading

import httpx

LOOKUP_BY_NAME = "/api/2.0/mlflow/experiments/get-by-name"


class TrackingProxy:
    def __init__(self, upstream: str, miss_first_lookup: bool = False):
        self.paths: list[str] = []
        self.missed: list[str] = []
        self.miss_first_lookup = miss_first_lookup
        self.upstream = httpx.Client(base_url=upstream, timeout=30)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def forward(self) -> None:
                proxy.paths.append(self.path.split("?")[0])
                if proxy.miss_first_lookup and self.path.startswith(LOOKUP_BY_NAME) and not proxy.missed:
                    proxy.missed.append(self.path)
                    self.answer(404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST",
                                                 "message": "Could not find experiment"}).encode(), "application/json")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                reply = proxy.upstream.request(self.command, self.path, content=body, headers=headers)
                self.answer(reply.status_code, reply.content, reply.headers.get("content-type", "application/json"))

            def answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = forward

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self.upstream.close()
