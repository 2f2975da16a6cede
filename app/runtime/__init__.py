"""Runtimes make manifests real: on a cluster (KubernetesRuntime) or as local processes (LocalRuntime)."""
