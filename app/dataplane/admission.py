"""Admission: whether a data-plane call may reach a model, decided from memory before its body
is read. The token's role (the same rule as every other route), the task known and Ready, the
route one its model serves, and the body within the API's and the profile's limits."""

from dataclasses import dataclass

from app.core.auth import Authenticator, Role
from app.dataplane.routes import Kind, Route
from app.errors import NotReady, PayloadTooLarge, TaskNotFound
from app.profiles import ModelProfile
from app.runtime.base import Endpoint, EndpointCache


@dataclass(frozen=True, slots=True)
class Admitted:
    endpoint: Endpoint
    body_limit: int  # bytes; also enforced while a body without Content-Length arrives
    timeout: float  # seconds: the profile's predict_timeout_seconds
    language_model: bool


class Admission:
    def __init__(self, endpoints: EndpointCache, profiles: dict[str, ModelProfile], authenticator: Authenticator,
                 max_predict_bytes: int):
        self.endpoints = endpoints
        self.authenticator = authenticator
        self.max_predict_bytes = max_predict_bytes
        served = {name: profile for name, profile in profiles.items() if profile.inference is not None}
        # Per profile, computed once: the smaller of the API's and the profile's body limits.
        self.limits = {name: min(max_predict_bytes, p.inference.max_request_bytes)  # type: ignore[union-attr]
                       for name, p in served.items()}
        self.timeouts = {name: p.inference.predict_timeout_seconds  # type: ignore[union-attr]
                         for name, p in served.items()}
        self.language_profiles = frozenset(name for name, p in profiles.items() if p.llm is not None)

    def admit(self, task_id: str, route: Route, authorization: str | None, declared_length: int | None,
              method: str, path: str) -> Admitted:
        """Raise the API error that answers the call instead (401, 404, 413, 503), or admit it."""
        self.authenticator.authorize(Role.PREDICT, authorization, method, path)
        if declared_length is not None and declared_length > self.max_predict_bytes:
            raise PayloadTooLarge(f"request body is larger than {self.max_predict_bytes} bytes")
        endpoint = self.endpoints.get(task_id)
        if endpoint is None:
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")
        language_model = endpoint.profile in self.language_profiles
        if route.kind is Kind.OPENAI and not language_model:
            raise TaskNotFound(f"deployment '{task_id}' serves profile '{endpoint.profile}', not a language model; "
                               f"use /api/v1/inference/{task_id}/predict", field="taskId")
        if not endpoint.ready:
            raise NotReady(f"deployment '{task_id}' is not ready: {endpoint.message or 'starting'}")
        limit = self.limits.get(endpoint.profile, self.max_predict_bytes)
        if declared_length is not None and declared_length > limit:
            raise PayloadTooLarge(f"predict body is {declared_length} bytes; the profile allows {limit}")
        return Admitted(endpoint, limit, self.timeouts.get(endpoint.profile, 30.0), language_model)
