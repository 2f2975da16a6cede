"""Lists a page at a time (app/core/pages.py): every task exactly once across pages, even when tasks
come and go between two pages; filters; continue tokens that are refused with the field named."""

import random

import pytest

from app.core.pages import ListQuery, page_of
from app.errors import InvalidSpec
from app.runtime.base import WorkloadState


def state(task_id: str, phase: str = "Running", profile: str = "tabular_regression") -> WorkloadState:
    return WorkloadState(kind="training", task_id=task_id, request={"modelProfile": profile}, phase=phase)


def profile_of(s: WorkloadState) -> str:
    return s.request["modelProfile"]


def all_pages(states: dict[str, WorkloadState], limit: int, between=lambda page: None, **filters: str) -> list[str]:
    seen: list[str] = []
    token = None
    while True:
        page = page_of(list(states.values()), ListQuery(limit, token, **filters), profile_of)
        assert len(page.states) <= limit
        seen += [s.task_id for s in page.states]
        if page.continue_token is None:
            assert page.remaining is None
            return seen
        assert page.remaining is not None and page.remaining > 0
        token = page.continue_token
        between(page)


def test_without_a_limit_every_task_comes_at_once_in_task_id_order() -> None:
    states = [state(f"t-{i:03d}") for i in random.Random(3).sample(range(40), 40)]
    page = page_of(states, ListQuery(), profile_of)
    assert [s.task_id for s in page.states] == sorted(s.task_id for s in states)
    assert page.continue_token is None and page.remaining is None


@pytest.mark.parametrize("limit", [1, 7, 50, 99, 100, 101])
def test_pages_cover_every_task_exactly_once(limit: int) -> None:
    states = {f"task-{i:04d}": state(f"task-{i:04d}") for i in random.Random(limit).sample(range(100), 100)}
    first = page_of(list(states.values()), ListQuery(limit), profile_of)
    assert first.remaining == (100 - limit if limit < 100 else None)
    assert all_pages(states, limit) == sorted(states)


def test_tasks_created_and_deleted_between_pages_never_repeat_or_hide_another() -> None:
    rng = random.Random(7)
    states = {f"task-{i:04d}": state(f"task-{i:04d}") for i in range(0, 300, 2)}
    original = set(states)
    deleted: set[str] = set()

    def churn(page) -> None:
        for _ in range(5):  # new tasks anywhere, and some old ones gone
            new = f"task-{rng.randrange(300):04d}"
            states.setdefault(new, state(new))
            gone = rng.choice(sorted(states))
            states.pop(gone)
            deleted.add(gone)

    seen = all_pages(states, 17, churn)
    assert len(seen) == len(set(seen)), "a task came twice"
    assert seen == sorted(seen)
    assert original - deleted <= set(seen), "a task that stayed was skipped"


def test_filters_by_status_and_profile_page_too() -> None:
    states = {}
    for i in range(60):
        phase = ("Pending", "Running", "Succeeded", "Failed")[i % 4]
        profile = "tabular_regression" if i % 3 else "llm_chat"
        states[f"t-{i:02d}"] = state(f"t-{i:02d}", phase, profile)
    want = sorted(t for t, s in states.items() if s.phase == "Failed" and s.request["modelProfile"] == "llm_chat")
    assert want
    assert all_pages(states, 2, status="Failed", profile="llm_chat") == want
    assert all_pages(states, 1000, status="Running") == sorted(t for t, s in states.items() if s.phase == "Running")


# Not base64; {}; {"v":1}; not base64 either; version 9.
@pytest.mark.parametrize("token", ["nonsense", "e30", "eyJ2IjoxfQ", "!!!!",
                                   "eyJ2Ijo5LCJhZnRlciI6InQiLCJmaWx0ZXJzIjp7fX0"])
def test_a_token_this_api_did_not_issue_is_refused_naming_continue(token: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        page_of([state("a")], ListQuery(1, token), profile_of)
    assert refused.value.field == "continue"


def test_a_token_replayed_under_other_filters_is_refused() -> None:
    states = [state(f"t-{i}", "Failed" if i % 2 else "Running") for i in range(10)]
    token = page_of(states, ListQuery(2, status="Failed"), profile_of).continue_token
    assert token is not None
    with pytest.raises(InvalidSpec) as refused:
        page_of(states, ListQuery(2, token), profile_of)
    assert refused.value.field == "continue" and "filters" in str(refused.value)
    assert page_of(states, ListQuery(2, token, status="Failed"), profile_of).states
