"""Why a task is where it is: pure functions from Kubernetes objects (plain dicts) to a phase and a message.

A user asks "why is my job pending?"; the answer is spread over the Job's conditions, its pods'
conditions and container states, and events. These functions read them and say it in one line.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.core.manifests import revision_of
from app.schemas.inference import DeploymentStatus
from app.schemas.training import TrainingStatus

# Waiting reasons of a container whose image cannot be had.
IMAGE_PULL_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)
# Waiting reasons of a container the kubelet cannot create (e.g. a missing ConfigMap or Secret key).
CONTAINER_CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
MESSAGE_LIMIT = 2000

Phase = tuple[str, str | None]


@dataclass(frozen=True)
class PodTrouble:
    """Something a pod's own status says is wrong with it."""

    reason: str
    message: str
    # Waiting will not cure it (an image that cannot be pulled, a crash loop, OOM).
    fatal: bool


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in _status(obj).get("conditions") or []}


def _true_conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kind: c for kind, c in _conditions(obj).items() if c.get("status") == "True"}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_LIMIT else "..." + text[-MESSAGE_LIMIT:]


def _memory_limit(pod: dict[str, Any], container_name: str) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == container_name:
            return ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def describe_termination(pod: dict[str, Any], container_name: str, terminated: dict[str, Any]) -> str:
    """'exited with code 1: <its termination message>' or 'was OOMKilled (memory limit 4Gi)'."""
    reason = terminated.get("reason") or ""
    if reason == "OOMKilled":
        limit = _memory_limit(pod, container_name)
        return "was OOMKilled: it used more memory than its limit" + (f" ({limit})" if limit else "")
    text = f"exited with code {terminated.get('exitCode')}"
    if reason and reason not in ("Error", "Completed"):
        text += f" ({reason})"
    # The container's termination message (FallbackToLogsOnError: else the last lines of its log).
    words = (terminated.get("message") or "").strip()
    return f"{text}: {_clip(words)}" if words else text


def _container_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = _status(pod)
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def pod_trouble(pod: dict[str, Any]) -> PodTrouble | None:
    """What keeps a pod from running well, from its conditions and container states; None if nothing."""
    scheduled = _conditions(pod).get("PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        # e.g. "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        return PodTrouble("Unschedulable", f"pod cannot be scheduled: {scheduled.get('message', '')}".strip(), False)
    for container in _container_statuses(pod):
        name = container.get("name", "")
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        reason = waiting.get("reason", "")
        if reason in IMAGE_PULL_REASONS:
            detail = waiting.get("message") or f"cannot pull image {container.get('image', '')}"
            return PodTrouble(reason, f"{reason}: {_clip(detail)}", True)
        if reason == "CrashLoopBackOff":
            story = f"; it {describe_termination(pod, name, last)}" if last else ""
            cause = "OOMKilled" if last.get("reason") == "OOMKilled" else reason
            return PodTrouble(cause, f"CrashLoopBackOff: container {name} keeps exiting{story}", True)
        if reason in CONTAINER_CONFIG_REASONS:
            return PodTrouble(reason, f"{reason}: {_clip(waiting.get('message', ''))}", True)
        if terminated.get("reason") == "OOMKilled":
            return PodTrouble("OOMKilled", f"container {name} {describe_termination(pod, name, terminated)}", True)
    return None


def container_started(pod: dict[str, Any]) -> bool:
    """Whether the pod's main container runs or ran (so it has logs: a crash-looping one, its last run's)."""
    statuses = _status(pod).get("containerStatuses") or []
    return any(
        (s.get("state") or {}).keys() & {"running", "terminated"} or "terminated" in (s.get("lastState") or {})
        for s in statuses
    )


def not_started_reason(pod: dict[str, Any]) -> str:
    """Why a pod's container has not started yet, in a few words."""
    trouble = pod_trouble(pod)
    if trouble is not None:
        return trouble.message
    for container in _status(pod).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"{waiting['reason']}" + (f": {waiting['message']}" if waiting.get("message") else "")
    scheduled = _conditions(pod).get("PodScheduled")
    if scheduled is None or scheduled.get("status") != "True":
        return "waiting to be scheduled on a node"
    return f"pod is {_status(pod).get('phase', 'Pending')}"


def newest(objects: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    # RFC 3339 timestamps in UTC order as strings; the name breaks ties within a second.
    return max(
        objects,
        key=lambda o: (o.get("metadata", {}).get("creationTimestamp") or "", o.get("metadata", {}).get("name", "")),
        default=None,
    )


def _uids(objects: Iterable[dict[str, Any]]) -> set[str]:
    return {o.get("metadata", {}).get("uid", "") for o in objects}


def warning_about(events: Sequence[dict[str, Any]], objects: Iterable[dict[str, Any]]) -> str | None:
    """The latest Warning event about any of `objects` (e.g. FailedScheduling, FailedCreate)."""
    uids = _uids(objects) - {""}
    mine = [e for e in events if e.get("type") == "Warning" and (e.get("involvedObject") or {}).get("uid") in uids]
    latest = max(mine, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", default=None)
    if latest is None:
        return None
    return f"{latest.get('reason', 'Warning')}: {_clip(latest.get('message', ''))}"


def _last_words(pods: Sequence[dict[str, Any]], who: str) -> str | None:
    """How the newest terminated container of `pods` ended, e.g. 'trainer exited with code 1: <error>'."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True):
        for container in _status(pod).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated:
                return f"{who} {describe_termination(pod, container.get('name', ''), terminated)}"
    return None


def training_phase(job: dict[str, Any], pods: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]] = ()) -> Phase:
    """A training task's phase and why, from its Job, the Job's pods, and Warning events."""
    done = _true_conditions(job)
    if "Complete" in done or "SuccessCriteriaMet" in done:
        return TrainingStatus.SUCCEEDED, None
    failed = done.get("Failed") or done.get("FailureTarget")
    if failed is not None:
        # DeadlineExceeded (activeDeadlineSeconds), BackoffLimitExceeded, PodFailurePolicy ...
        reason = failed.get("reason") or "Failed"
        story = _last_words(pods, "trainer") or failed.get("message") or "the Job failed"
        return TrainingStatus.FAILED, f"{reason}: {story}"
    live = [p for p in pods if _status(p).get("phase") in ("Pending", "Running", None)]
    if any(_status(p).get("phase") == "Running" for p in live):
        return TrainingStatus.RUNNING, None
    pod = newest(live)
    if pod is not None:
        trouble = pod_trouble(pod)
        if trouble is not None:
            return TrainingStatus.PENDING, trouble.message
        warning = warning_about(events, [pod])
        return TrainingStatus.PENDING, warning or f"trainer pod {not_started_reason(pod)}"
    if any(_status(p).get("phase") == "Succeeded" for p in pods):
        return TrainingStatus.RUNNING, "the trainer finished; the Job is completing"
    if pods and _status(job).get("active", 0) == 0:
        # An attempt failed and the Job controller has not started the next one (or failed the Job) yet.
        return TrainingStatus.PENDING, f"retrying: {_last_words(pods, 'the last trainer') or 'the last attempt failed'}"
    warning = warning_about(events, [job, *pods])
    return TrainingStatus.PENDING, warning or "waiting for the Job controller to create the trainer pod"


def job_times(job: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """When the Job started, and when it finished (successfully or not)."""
    status = _status(job)
    finished = status.get("completionTime")
    if not finished:
        failed = _true_conditions(job).get("Failed")
        finished = failed.get("lastTransitionTime") if failed else None
    return parse_time(status.get("startTime")), parse_time(finished)


def inference_phase(
    deployment: dict[str, Any], pods: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]] = ()
) -> Phase:
    """An inference task's phase and why, from its Deployment, the Deployment's pods, and Warning events."""
    status = _status(deployment)
    if (status.get("availableReplicas") or 0) > 0:
        return DeploymentStatus.READY, None
    troubles = [t for t in (pod_trouble(p) for p in pods) if t is not None]
    fatal = next((t for t in troubles if t.fatal), None)
    progressing = _conditions(deployment).get("Progressing")
    if progressing and progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        detail = f"; {fatal.message}" if fatal else ""
        return DeploymentStatus.FAILED, f"ProgressDeadlineExceeded: {progressing.get('message', '')}{detail}"
    if fatal is not None:
        return DeploymentStatus.FAILED, fatal.message
    if troubles:
        return DeploymentStatus.PENDING, troubles[0].message
    replica_failure = _true_conditions(deployment).get("ReplicaFailure")
    if replica_failure is not None:
        # e.g. FailedCreate: pods "..." is forbidden: exceeded quota
        reason = replica_failure.get("reason", "ReplicaFailure")
        return DeploymentStatus.PENDING, f"{reason}: {replica_failure.get('message', '')}"
    pod = newest(pods)
    if pod is None:
        warning = warning_about(events, [deployment])
        return DeploymentStatus.PENDING, warning or "waiting for the model server pod to be created"
    if container_started(pod):
        return DeploymentStatus.PENDING, "model server is starting (not ready yet: loading the model)"
    warning = warning_about(events, [pod])
    return DeploymentStatus.PENDING, warning or f"model server pod {not_started_reason(pod)}"


# -- revisions: which one serves, and why the newest one does not yet ----------------------------


def _pod_ready(pod: dict[str, Any]) -> bool:
    # A terminating pod is leaving the endpoints whatever its probe says.
    return "Ready" in _true_conditions(pod) and not pod.get("metadata", {}).get("deletionTimestamp")


def _revision(obj: dict[str, Any]) -> int:
    # A Deployment made before revisions existed labels no revision: it serves revision 1.
    return revision_of(obj) or 1


def rollout_complete(deployment: dict[str, Any]) -> bool:
    """Whether the controller has seen the newest spec and every replica runs the newest template
    and is available (as `kubectl rollout status` judges it): no old pod is left to look at."""
    status, metadata = _status(deployment), deployment.get("metadata", {})
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    return (
        (status.get("observedGeneration") or 0) >= (metadata.get("generation") or 0)
        and (status.get("updatedReplicas") or 0) == (status.get("replicas") or 0) == replicas
        and (status.get("availableReplicas") or 0) == replicas
    )


def _last_error(pod: dict[str, Any]) -> str | None:
    """A container that ended with an error and is not (yet) in a crash loop: 'container server exited ...'."""
    for container in _container_statuses(pod):
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            name = container.get("name", "")
            return f"container {name} {describe_termination(pod, name, terminated)}"
    return None


def revision_status(deployment: dict[str, Any], pods: Sequence[dict[str, Any]] | None) -> tuple[int | None, str | None]:
    """The revision whose model servers answer now (the newest one with a ready pod), and why the
    Deployment's newest revision does not serve yet when it cannot start. `pods` is None when the
    rollout is complete and they were not read: then the template's revision serves if available."""
    newest_revision = _revision(deployment["spec"]["template"])
    if pods is None:
        available = (_status(deployment).get("availableReplicas") or 0) > 0
        return (newest_revision if available else None), None
    ready = {_revision(pod) for pod in pods if _pod_ready(pod)}
    serving = max(ready, default=None)
    if newest_revision in ready:
        return serving, None
    mine = sorted((p for p in pods if _revision(p) == newest_revision),
                  key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True)
    for pod in mine:
        trouble = pod_trouble(pod)
        if trouble is not None:
            return serving, trouble.message
        error = _last_error(pod)
        if error is not None:
            return serving, error
    # No pod to blame: the controller cannot make one (a quota with no room for the extra pod),
    # or the rollout ran out of time.
    conditions = _conditions(deployment)
    failure = conditions.get("ReplicaFailure")
    if failure is not None and failure.get("status") == "True":
        return serving, f"{failure.get('reason', 'ReplicaFailure')}: {failure.get('message', '')}"
    progressing = conditions.get("Progressing")
    if progressing and progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return serving, f"ProgressDeadlineExceeded: {progressing.get('message', '')}"
    return serving, None
