"""The data plane: every call that reaches a model goes through here, and only here.

    client ─► DataPlane (plane.py, the API's outermost ASGI layer)
                 routes.py     which calls are the data plane's: predict, and the OpenAI routes
                 admission.py  token role, task known and Ready, body limits
                 plane.py      choose_upstream(): the model server that answers (one revision today)
                 upstream.py   one pooled HTTP client for plain and streamed answers, and the one
                               mapping of upstream failures to 502 / 503 + Retry-After / 504
                 language.py   the specification's predict body for a language model <-> OpenAI's
                 calls.py      observe(): each call seen once with its task id, status, duration and
                               request id (the access line; where request metrics belong)

No call to the cluster, MLflow or the disk happens per request: endpoints come from the runtime's
in-memory cache, tokens from memory.
"""

from app.dataplane.plane import DataPlane
from app.dataplane.upstream import UpstreamClient

__all__ = ["DataPlane", "UpstreamClient"]
