"""How the predict proxy reaches a model's Service: by cluster DNS from inside the cluster, or through
the API server's service proxy (with the kubeconfig's credentials) from a developer's machine."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kubernetes import client

from app.core.manifests import HTTP_PORT_NAME, SERVICE_PORT
from app.runtime.base import Tls


@dataclass(frozen=True)
class RouteTarget:
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    tls: Tls | None = None


class ServiceRoute(Protocol):
    def target(self, service_name: str) -> RouteTarget: ...


class ServiceDnsRoute:
    """In a pod: straight to the Service's ClusterIP by its DNS name; no API server in the path."""

    def __init__(self, namespace: str, port: int = SERVICE_PORT):
        self.namespace = namespace
        self.port = port

    def target(self, service_name: str) -> RouteTarget:
        return RouteTarget(f"http://{service_name}.{self.namespace}.svc:{self.port}")


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def tls_of(configuration: client.Configuration) -> Tls:
    """The TLS settings the official client uses (cluster CA, client certificate), as PEM bytes."""
    identity = None
    if configuration.cert_file:
        identity = (_read(configuration.cert_file) or b"").rstrip(b"\n") + b"\n" + (
            _read(configuration.key_file or configuration.cert_file) or b"")
    return Tls(_read(configuration.ssl_ca_cert), identity, bool(configuration.verify_ssl))


def auth_headers(configuration: client.Configuration) -> dict[str, str]:
    """The credentials headers the official client would send (a bearer token, refreshed if it can be)."""
    headers = {
        setting["key"]: setting["value"]
        for setting in configuration.auth_settings().values()
        if setting.get("in") == "header" and setting.get("value")
    }
    if configuration.username and configuration.password and "authorization" not in headers:
        headers["authorization"] = configuration.get_basic_auth_token()
    return headers


class ApiServerProxyRoute:
    """Outside a cluster: `<api server>/api/v1/namespaces/<ns>/services/<svc>:http/proxy`.

    Needs `create` on services/proxy for the kubeconfig's user (see API_PROXY_PERMISSIONS).
    """

    def __init__(self, configuration: client.Configuration, namespace: str):
        self.configuration = configuration
        self.namespace = namespace
        self.host = configuration.host.rstrip("/")
        self.tls = tls_of(configuration) if self.host.startswith("https://") else None

    def target(self, service_name: str) -> RouteTarget:
        url = f"{self.host}/api/v1/namespaces/{self.namespace}/services/{service_name}:{HTTP_PORT_NAME}/proxy"
        # Read on each call: a token from an exec plugin or a projected file is refreshed here.
        return RouteTarget(url, auth_headers(self.configuration), self.tls)
