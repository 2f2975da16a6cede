"""Label and field selectors as the Kubernetes API reads them (equality, inequality, existence, set-based)."""

import re
from typing import Any

_SET_BASED = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _requirements(selector: str) -> list[str]:
    # Commas separate requirements, except inside the parentheses of `in (a, b)`.
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def _matches(requirement: str, value_of: Any) -> bool:
    set_based = _SET_BASED.match(requirement)
    if set_based:
        key, operator, values = set_based.groups()
        wanted = {v.strip() for v in values.split(",")}
        return (value_of(key) in wanted) == (operator == "in")
    if "!=" in requirement:
        key, value = requirement.split("!=", 1)
        return value_of(key.strip()) != value.strip()
    if "=" in requirement:
        key, value = requirement.replace("==", "=").split("=", 1)
        return value_of(key.strip()) == value.strip()
    if requirement.startswith("!"):
        return value_of(requirement[1:].strip()) is None
    return value_of(requirement) is not None


def matches_labels(selector: str | None, labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(_matches(requirement, labels.get) for requirement in _requirements(selector or ""))


def _field(obj: dict[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if value is None else str(value)


def matches_fields(selector: str | None, obj: dict[str, Any]) -> bool:
    return all(_matches(requirement, lambda path: _field(obj, path)) for requirement in _requirements(selector or ""))
