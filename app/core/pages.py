"""Lists a page at a time, as the Kubernetes API pages them: `limit` items in task-id order, and a
continue token that names where the next page starts.

The token is the last task id served and the filters it was served under, encoded: a task created or
deleted between two pages cannot make another task appear twice or be skipped, and the token
cannot be replayed under other filters (it would skip tasks of those).
"""

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidSpec
from app.runtime.base import WorkloadState

TOKEN_VERSION = 1


@dataclass(frozen=True)
class ListQuery:
    """What a list asks for: None everywhere is every task, as before pages existed."""

    limit: int | None = None
    continue_token: str | None = None
    status: str | None = None
    profile: str | None = None

    def filters(self) -> dict[str, str]:
        return {name: value for name, value in (("status", self.status), ("profile", self.profile)) if value}


@dataclass(frozen=True)
class Page:
    states: list[WorkloadState]
    continue_token: str | None = None
    # Matching tasks after this page, as Kubernetes' remainingItemCount; None on the last page.
    remaining: int | None = None


def _encode(after: str, filters: dict[str, str]) -> str:
    raw = json.dumps({"v": TOKEN_VERSION, "after": after, "filters": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(token: str, filters: dict[str, str]) -> str:
    """The task id the page after `token` starts after."""
    try:
        decoded: Any = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = decoded["after"]
        valid = decoded.get("v") == TOKEN_VERSION and isinstance(after, str)
    except (binascii.Error, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidSpec("continue is not a token this API issued: pass the continue value of the previous page "
                          "as it came", field="continue")
    if decoded.get("filters") != filters:
        raise InvalidSpec("continue was issued for a list with other filters (status, profile): ask the next "
                          "page with the filters of the first", field="continue")
    return after


def page_of(states: Sequence[WorkloadState], query: ListQuery,
            profile_of: Callable[[WorkloadState], str | None]) -> Page:
    """The page `query` asks for, of `states` (in any order) filtered by status and profile."""
    filters = query.filters()
    after = _decode(query.continue_token, filters) if query.continue_token else None
    matching = sorted(
        (state for state in states
         if (query.status is None or state.phase == query.status)
         and (query.profile is None or profile_of(state) == query.profile)
         and (after is None or state.task_id > after)),
        key=lambda state: state.task_id,
    )
    if query.limit is None or len(matching) <= query.limit:
        return Page(matching)
    served = matching[:query.limit]
    return Page(served, _encode(served[-1].task_id, filters), len(matching) - query.limit)
