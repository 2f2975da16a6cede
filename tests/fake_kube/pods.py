"""Pod statuses as the kubelet and the scheduler write them, for tests to put pods in a given state.

Each builder returns a pod `status`; the fake fills in the container's name and image from the spec.
"""

from typing import Any


def _container(state: dict[str, Any], ready: bool = False, last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"state": state, "ready": ready, "restartCount": 0 if last is None else 3}
    status["lastState"] = {"terminated": last} if last else {}
    return status


def _scheduled(status: str = "True", **extra: str) -> dict[str, Any]:
    return {"type": "PodScheduled", "status": status, **extra}


def running(ready: bool = True) -> dict[str, Any]:
    return {
        "phase": "Running",
        "conditions": [_scheduled(), {"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [_container({"running": {"startedAt": "2030-01-01T00:00:00Z"}}, ready=ready)],
    }


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    """Scheduled, its container not started: ContainerCreating, ImagePullBackOff, ErrImagePull ..."""
    state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
    return {"phase": "Pending", "conditions": [_scheduled()], "containerStatuses": [_container(state)]}


def unschedulable(message: str) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [_scheduled("False", reason="Unschedulable", message=message)],
    }


def terminated(exit_code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    state = {"terminated": {"exitCode": exit_code, "reason": reason, **({"message": message} if message else {})}}
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [_scheduled()],
        "containerStatuses": [_container(state)],
    }


def crash_looping(exit_code: int = 1, reason: str = "Error", message: str = "") -> dict[str, Any]:
    last = {"exitCode": exit_code, "reason": reason, **({"message": message} if message else {})}
    state = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}
    return {"phase": "Running", "conditions": [_scheduled()], "containerStatuses": [_container(state, last=last)]}
