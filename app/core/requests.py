"""Idempotent create: the same request again returns the task, another request under its id is 409."""

from typing import Any

from app.errors import TaskConflict


def differing_fields(stored: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    fields = []
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            fields += differing_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            fields.append(prefix + key)
    return fields


def check_same_request(kind: str, task_id: str, stored: dict[str, Any], given: dict[str, Any]) -> None:
    differences = differing_fields(stored, given)
    if differences:
        raise TaskConflict(
            f"{kind} task '{task_id}' already exists with a different spec (differs in: {', '.join(differences)}); "
            f"delete it first or use another taskId",
            field="taskId",
        )
