"""The Kubernetes API permissions the control plane needs, declared once.

The platform's Role (kubernetes/) grants exactly these, and a test compares the two, so the
runtime never calls an API the Role does not allow and the Role grants nothing unused.
"""

from typing import NamedTuple


class Permission(NamedTuple):
    api_group: str  # "" is the core group
    resource: str
    verbs: tuple[str, ...]


REQUIRED_PERMISSIONS: tuple[Permission, ...] = (
    # Training tasks are Jobs (read by name or by label; the object cache lists and watches them);
    # delete propagates to their pods.
    Permission("batch", "jobs", ("create", "get", "list", "watch", "delete")),
    # Inference tasks are a Deployment and a Service each (and a canary's pair while one runs);
    # the endpoint cache watches them; an update (a new revision, other replicas, a canary's
    # weight) replaces them.
    Permission("apps", "deployments", ("create", "get", "list", "watch", "update", "delete")),
    Permission("", "services", ("create", "get", "list", "watch", "update", "delete")),
    # Replicas that follow the load: a HorizontalPodAutoscaler per autoscaled deployment, made,
    # replaced and removed with it.
    Permission("autoscaling", "horizontalpodautoscalers", ("create", "get", "list", "update", "delete")),
    # Status reasons (unschedulable, image pull, crash loop, OOM) and training logs come from pods.
    # Logs follow a pod by watching it until it starts.
    Permission("", "pods", ("list", "watch")),
    Permission("", "pods/log", ("get",)),
    # Why a pod is pending (e.g. no GPU free) is told by its events (Warning ones, watched).
    Permission("", "events", ("list", "watch")),
)

# Outside a cluster the predict proxy goes through the API server's service proxy with the
# developer's own kubeconfig credentials (Settings.predict_route "api-proxy"): they need this too.
# A pod reaches Services by cluster DNS, so the platform's Role does not grant it.
API_PROXY_PERMISSIONS: tuple[Permission, ...] = (Permission("", "services/proxy", ("create",)),)


def allows(permissions: tuple[Permission, ...], api_group: str, resource: str, verb: str) -> bool:
    return any(p.api_group == api_group and p.resource == resource and verb in p.verbs for p in permissions)
