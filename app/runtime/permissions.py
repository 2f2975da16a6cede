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
    # Training tasks are Jobs; delete propagates to their pods.
    Permission("batch", "jobs", ("create", "get", "list", "watch", "delete")),
    # Inference tasks are a Deployment and a Service each; the endpoint cache watches both.
    Permission("apps", "deployments", ("create", "get", "list", "watch", "delete")),
    Permission("", "services", ("create", "get", "list", "watch", "delete")),
    # Status reasons (unschedulable, image pull, crash loop, OOM) and training logs come from pods.
    Permission("", "pods", ("get", "list", "watch")),
    Permission("", "pods/log", ("get",)),
    # Why a pod is pending (e.g. no GPU free) is told by its events.
    Permission("", "events", ("list",)),
)
