"""Names of the environment variables through which the control plane talks to a workload.

Apart from models/spec.py (which re-exports them) because that module imports pydantic: the
model server reads its spec's model URI, to start the download, before importing anything else.
"""

TRAIN_SPEC_ENV = "MLOPS_TRAIN_SPEC"
SERVE_SPEC_ENV = "MLOPS_SERVE_SPEC"
SERVE_HOST_ENV = "MLOPS_SERVE_HOST"
SERVE_PORT_ENV = "MLOPS_SERVE_PORT"
# Kubernetes reads a container's last words from this file (terminationMessagePath).
TERMINATION_LOG_ENV = "MLOPS_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
