"""Name rules: task and model ids become Kubernetes object names, so they must be DNS-1123 labels."""

import hashlib
import re

# Objects get a short prefix so that a user's id can never take the name of a platform object
# (a modelId "mlflow" must not replace the MLflow Service).
JOB_PREFIX = "train-"
INFERENCE_PREFIX = "infer-"
MAX_NAME_LENGTH = 63
MAX_ID_LENGTH = MAX_NAME_LENGTH - max(len(JOB_PREFIX), len(INFERENCE_PREFIX))

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

ID_RULE = (
    f"must be lowercase letters, digits and '-', start and end with a letter or digit, "
    f"and be at most {MAX_ID_LENGTH} characters (it names Kubernetes objects)"
)


def id_problem(value: str) -> str | None:
    """Why `value` cannot be a task or model id, or None when it can."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters; {ID_RULE}"
    if not _DNS_LABEL.fullmatch(value):
        return ID_RULE
    return None


def job_name(task_id: str) -> str:
    return JOB_PREFIX + task_id


def inference_name(model_id: str) -> str:
    """Name of both the Deployment and the Service that serve `model_id`."""
    return INFERENCE_PREFIX + model_id


CANARY_PREFIX = "canary-"


def canary_name(model_id: str) -> str:
    """Name of the canary Deployment and Service of `model_id` (a second revision taking part of
    its traffic); an id too long for the prefix is shortened with a hash, so names stay unique."""
    name = CANARY_PREFIX + model_id
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:6]
    return f"{CANARY_PREFIX}{model_id[:MAX_NAME_LENGTH - len(CANARY_PREFIX) - 7].rstrip('-')}-{digest}"
