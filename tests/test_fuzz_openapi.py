"""schemathesis against the service's own OpenAPI document: no 5xx on any generated input, and
every response matches the status codes and schemas the document declares."""

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import ApiProcess

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ADMIN_TOKEN = "admin-token-for-the-fuzzer-0123456789"


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str):
    api = ApiProcess(tmp_path_factory.mktemp("fuzz"), mlflow_uri, {"MLOPS_API_TOKENS": f"admin:{ADMIN_TOKEN}"})
    api.start()
    yield api
    api.stop()


def operations(api: ApiProcess) -> list:
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_responses_match_the_document(fuzzed_api: ApiProcess, mode: GenerationMode) -> None:
    found = operations(fuzzed_api)
    assert len(found) >= 10  # every route is in the document
    fuzzed = 0

    for operation in found:

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(max_examples=20, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def fuzz(case) -> None:
            case.call_and_validate(base_url=fuzzed_api.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                   checks=CHECKS, timeout=30)

        try:
            fuzz()
        except hypothesis.errors.Unsatisfiable:
            # A route with no parameters or body has no invalid input to make.
            assert mode == GenerationMode.NEGATIVE and not list(operation.iter_parameters()) and not operation.body
            continue
        fuzzed += 1
    assert fuzzed >= 8
