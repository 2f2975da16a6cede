"""Where the cluster is, who this API is there, and in which namespace it works.

In a pod: its ServiceAccount (the official in-cluster config) and the pod's own namespace. Outside:
the kubeconfig (its current or a chosen context) and that context's namespace. A namespace set in
the settings wins over both; "default" is the last resort.
"""

from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from app.errors import DependencyUnavailable
from app.runtime.kubernetes.routes import ApiServerProxyRoute, ServiceDnsRoute, ServiceRoute
from app.settings import Settings

SERVICEACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class ClusterConnection:
    api_client: client.ApiClient
    namespace: str
    in_cluster: bool


def _pod_namespace() -> str | None:
    try:
        return SERVICEACCOUNT_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None


def _load_in_cluster(configuration: client.Configuration) -> bool:
    # The official loader decides (KUBERNETES_SERVICE_HOST/PORT set, token and CA files present).
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        return False
    return True


def connect(settings: Settings) -> ClusterConnection:
    configuration = client.Configuration()
    # An explicit kubeconfig wins, even in a pod (e.g. to drive another cluster).
    if settings.kubeconfig is None and _load_in_cluster(configuration):
        namespace = settings.namespace or _pod_namespace() or DEFAULT_NAMESPACE
        return ClusterConnection(client.ApiClient(configuration), namespace, in_cluster=True)
    config_file = str(settings.kubeconfig) if settings.kubeconfig else None
    try:
        config.load_kube_config(
            config_file=config_file, context=settings.kube_context, client_configuration=configuration
        )
        contexts, current = config.list_kube_config_contexts(config_file=config_file)
    except (ConfigException, OSError) as exc:
        raise DependencyUnavailable(
            "no Kubernetes configuration: this is not a pod with a ServiceAccount and the kubeconfig "
            f"({config_file or '$KUBECONFIG or ~/.kube/config'}) cannot be used ({exc}): run it in a pod, "
            "or set MLOPS_KUBECONFIG to a kubeconfig file"
        ) from exc
    chosen = current
    if settings.kube_context:
        chosen = next((c for c in contexts if c["name"] == settings.kube_context), current)
    namespace = settings.namespace or (chosen.get("context") or {}).get("namespace") or DEFAULT_NAMESPACE
    return ClusterConnection(client.ApiClient(configuration), namespace, in_cluster=False)


def predict_route(setting: str, connection: ClusterConnection) -> ServiceRoute:
    """"auto": cluster DNS from a pod, else the API server's service proxy (a developer's machine)."""
    route = setting if setting != "auto" else ("service-dns" if connection.in_cluster else "api-proxy")
    if route == "service-dns":
        return ServiceDnsRoute(connection.namespace)
    return ApiServerProxyRoute(connection.api_client.configuration, connection.namespace)
