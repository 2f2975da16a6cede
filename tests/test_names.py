"""Task and model ids become Kubernetes names: DNS-1123 labels within 63 characters with our prefixes."""

import re

import pytest

from app.core.names import MAX_ID_LENGTH, MAX_NAME_LENGTH, id_problem, inference_name, job_name

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # what a Service name must be


@pytest.mark.parametrize("value", ["a", "train-reg-01", "0abc", "x" * MAX_ID_LENGTH, "a-b-c-9"])
def test_valid_ids_make_valid_object_names(value: str) -> None:
    assert id_problem(value) is None
    for name in (job_name(value), inference_name(value)):
        assert len(name) <= MAX_NAME_LENGTH
        assert DNS_1123_LABEL.fullmatch(name)
    assert DNS_1035_LABEL.fullmatch(inference_name(value))


@pytest.mark.parametrize(
    "value", ["", "A", "a_b", "-a", "a-", "a.b", "a b", "ä", "x" * (MAX_ID_LENGTH + 1), "train-reg-01\n"]
)
def test_invalid_ids_are_refused_with_the_rule(value: str) -> None:
    problem = id_problem(value)
    assert problem is not None
    assert "lowercase" in problem or "empty" in problem
