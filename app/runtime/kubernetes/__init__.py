"""The Kubernetes runtime: Jobs, GPU Deployments and Services on a real cluster (k3s), the cluster as the database.

The only part of app/ that imports the `kubernetes` client.
"""

from app.runtime.kubernetes.runtime import KubernetesRuntime

__all__ = ["KubernetesRuntime"]
