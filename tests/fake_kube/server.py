"""The fake API's HTTP side: routes Kubernetes REST paths to the store, streams watches and logs,
forwards the services proxy subresource, and applies the faults a test injected.

Speaks HTTP/1.1 with keep-alive, as the official client expects; streams are chunked, and a
"dropped" stream is a socket shut down without the final chunk.
"""

import contextlib
import http.client
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_kube.store import ApiError

if TYPE_CHECKING:
    from tests.fake_kube.fake import FakeKube

# (api group, version, plural) -> kind, for the resources the fake serves.
KINDS = {
    ("", "v1", "services"): "Service",
    ("", "v1", "pods"): "Pod",
    ("", "v1", "events"): "Event",
    ("batch", "v1", "jobs"): "Job",
    ("apps", "v1", "deployments"): "Deployment",
    ("autoscaling", "v2", "horizontalpodautoscalers"): "HorizontalPodAutoscaler",
}
_PATH = re.compile(
    r"^/(?:api/(?P<core_version>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<namespace>[^/]+)/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+)(?P<rest>/.*)?)?)?$"
)
_PROXY_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def flag(value: str | None) -> bool:
    """A boolean query parameter as the API server parses it (Go's strconv.ParseBool)."""
    return value in ("1", "t", "T", "true", "True", "TRUE")


@dataclass(frozen=True)
class Route:
    verb: str  # the RBAC verb: get, list, watch, create, delete ...
    api_group: str
    version: str
    resource: str  # plural, or plural/subresource as RBAC names it (pods/log, services/proxy)
    namespace: str
    name: str | None
    rest: str  # the path after .../proxy

    @property
    def plural(self) -> str:
        return self.resource.split("/")[0]


def parse_route(method: str, path: str, query: dict[str, str]) -> Route | None:
    match = _PATH.match(path)
    if match is None:
        return None
    group = match["group"] or ""
    version = match["core_version"] or match["version"]
    resource, name, sub = match["resource"], match["name"], match["sub"]
    if (group, version, resource) not in KINDS:
        return None
    if sub is not None:
        if (resource, sub) == ("services", "proxy"):
            # "<name>", "<name>:<port>" or "<scheme>:<name>:<port>"
            parts = name.split(":")
            service = parts[1] if len(parts) == 3 else parts[0]
            verb = _PROXY_VERBS.get(method, method.lower())
            return Route(verb, group, version, "services/proxy", match["namespace"], service, match["rest"] or "/")
        if (resource, sub) == ("pods", "log") and method == "GET":
            return Route("get", group, version, "pods/log", match["namespace"], name, "")
        return None
    if name is None:
        verb = {"GET": "watch" if flag(query.get("watch")) else "list", "POST": "create"}.get(method)
    else:
        verb = {"GET": "get", "PUT": "update", "DELETE": "delete"}.get(method)
    return Route(verb, group, version, resource, match["namespace"], name, "") if verb else None


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    return body | {"code": code}


class FakeHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: "FakeKube"):
        super().__init__(("127.0.0.1", 0), KubeRequestHandler)
        self.fake = fake
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_all_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class KubeRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without this, Nagle and delayed ACKs add 40 ms a call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: a test's output should be its own

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- dispatch ----------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = parse_route(method, url.path, query)
        if route is None:
            self._send_status(404, "NotFound", f"the server could not find the requested resource ({url.path})")
            return
        fake.record(route)
        if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
            self._send_status(401, "Unauthorized", "Unauthorized")
            return
        fault = fake.take_fault(route.verb, route.resource)
        if fault is not None:
            if fault.reset:
                self._reset()
            else:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                self._send_status(fault.status, fault.reason, fault.message, headers)
            return
        try:
            self._serve(route, method, query, body)
        except ApiError as error:
            self._send_status(error.code, error.reason, error.message, details=error.details)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _serve(self, route: Route, method: str, query: dict[str, str], body: bytes) -> None:
        fake, store = self.server.fake, self.server.fake.store
        if route.resource == "services/proxy":
            self._proxy(route, method, query, body)
        elif route.resource == "pods/log":
            self._log(route, query)
        elif route.verb == "watch":
            self._watch(route, query)
        elif route.verb == "list":
            items, version = store.list(route.plural, route.namespace, query.get("labelSelector"),
                                        query.get("fieldSelector"))
            kind = KINDS[(route.api_group, route.version, route.plural)]
            api_version = f"{route.api_group}/{route.version}" if route.api_group else route.version
            self._send_json(200, {"kind": f"{kind}List", "apiVersion": api_version,
                                  "metadata": {"resourceVersion": str(version)}, "items": items})
        elif route.verb == "get":
            obj = store.get(route.plural, route.namespace, route.name or "")
            if obj is None:
                raise ApiError(404, "NotFound", f'{route.plural} "{route.name}" not found')
            self._send_json(200, obj)
        elif route.verb == "create":
            obj = json.loads(body or b"{}")
            kind = KINDS[(route.api_group, route.version, route.plural)]
            if obj.get("kind") not in (None, kind):
                raise ApiError(400, "BadRequest", f"the body is a {obj.get('kind')}, not a {kind}")
            self._send_json(201, store.create(route.plural, route.namespace, obj))
        elif route.verb == "update":
            obj = json.loads(body or b"{}")
            kind = KINDS[(route.api_group, route.version, route.plural)]
            if obj.get("kind") not in (None, kind):
                raise ApiError(400, "BadRequest", f"the body is a {obj.get('kind')}, not a {kind}")
            self._send_json(200, store.replace(route.plural, route.namespace, route.name or "", obj))
        elif route.verb == "delete":
            options = json.loads(body or b"{}")
            propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
            uid = (options.get("preconditions") or {}).get("uid")
            gone = store.delete(route.plural, route.namespace, route.name or "", propagation, uid)
            fake.deletions.append((route.plural, route.name, propagation))
            self._send_json(200, gone)

    # -- responses -------------------------------------------------------------------------------------

    def _send_bytes(self, code: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, code: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send_bytes(code, json.dumps(obj).encode(), "application/json", headers)

    def _send_status(self, code: int, reason: str, message: str, headers: dict[str, str] | None = None,
                     details: dict[str, Any] | None = None) -> None:
        self._send_json(code, status_body(code, reason, message, details), headers)

    def _reset(self) -> None:
        """A connection reset: no answer at all."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _start_chunks(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    # -- streams ---------------------------------------------------------------------------------------

    def _watch(self, route: Route, query: dict[str, str]) -> None:
        fake, store = self.server.fake, self.server.fake.store
        fake.wait_while_watches_held()
        labels, fields = query.get("labelSelector"), query.get("fieldSelector")
        deadline = time.monotonic() + int(query.get("timeoutSeconds") or 1800)
        requested = query.get("resourceVersion") or "0"
        with store.cond:
            drops, ends = fake.watch_drops, fake.watch_ends
            if requested != "0" and int(requested) < store.compacted_before:
                gone = status_body(410, "Expired", f"too old resource version: {requested} ({store.compacted_before})")
                first: list[dict[str, Any]] = [{"type": "ERROR", "object": gone}]
                cursor, finished = store.resource_version, True
            elif requested == "0":
                # No resourceVersion: every matching object as ADDED, then what follows.
                items, cursor = store.list(route.plural, route.namespace, labels, fields)
                first, finished = [{"type": "ADDED", "object": obj} for obj in items], False
            else:
                first, cursor, finished = [], int(requested), False
        self._start_chunks("application/json")
        for event in first:
            self._chunk(json.dumps(event).encode() + b"\n")
        while not finished:
            with store.cond:
                while True:
                    events = store.events_after(cursor, route.plural, route.namespace, labels, fields)
                    dropped = fake.watch_drops != drops or fake.closing
                    finished = fake.watch_ends != ends or time.monotonic() >= deadline
                    if events or dropped or finished:
                        break
                    store.cond.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
                cursor = store.resource_version
            if dropped:  # the connection breaks: what happened since is never sent
                self._reset()
                return
            for event in events:
                self._chunk(json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n")
        self._end_chunks()

    def _log(self, route: Route, query: dict[str, str]) -> None:
        fake, store = self.server.fake, self.server.fake.store
        pod = store.get("pods", route.namespace, route.name or "")
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{route.name}" not found')
        container = query.get("container") or pod["spec"]["containers"][0]["name"]
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        status = next((s for s in statuses if s.get("name") == container), {})
        state = status.get("state") or {}
        # A container waiting to restart still has its last run's log.
        if not state.keys() & {"running", "terminated"} and "terminated" not in (status.get("lastState") or {}):
            reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{route.name}" is waiting to start: '
                                              f"{reason}")
        data = store.log_of(route.namespace, route.name or "")
        shown = data
        if query.get("tailLines") is not None:
            lines = data.splitlines(keepends=True)
            shown = b"".join(lines[-int(query["tailLines"]):]) if int(query["tailLines"]) > 0 else b""
        if not flag(query.get("follow")):
            self._send_bytes(200, shown, "text/plain")
            return
        self._start_chunks("text/plain")
        self._chunk(shown)
        sent = len(data)
        while True:
            with store.cond:
                while True:
                    data = store.log_of(route.namespace, route.name or "")
                    current = store.objects.get(("pods", route.namespace, route.name or ""))
                    ended = current is None or fake.closing or _container_terminated(current, container)
                    if len(data) > sent or ended:
                        break
                    store.cond.wait(timeout=0.5)
            self._chunk(data[sent:])
            sent = len(data)
            if ended:
                self._end_chunks()
                return

    # -- the services proxy ----------------------------------------------------------------------------

    def _proxy(self, route: Route, method: str, query: dict[str, str], body: bytes) -> None:
        fake = self.server.fake
        if fake.store.get("services", route.namespace, route.name or "") is None:
            raise ApiError(404, "NotFound", f'services "{route.name}" not found')
        backend = fake.backends.get((route.namespace, route.name or ""))
        if backend is None:
            raise ApiError(503, "ServiceUnavailable", f'no endpoints available for service "{route.name}"')
        host, port = backend
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            connection.request(method, route.rest, body=body or None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            self._send_bytes(answer.status, data, answer.getheader("Content-Type", "application/octet-stream"))
        except OSError as exc:
            raise ApiError(503, "ServiceUnavailable", f"error trying to reach service: {exc}") from exc
        finally:
            connection.close()


def _container_terminated(pod: dict[str, Any], container: str) -> bool:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container and "terminated" in (status.get("state") or {}):
            return True
    return False
