"""The control plane: turns train and deploy requests into workloads and proxies predictions."""
