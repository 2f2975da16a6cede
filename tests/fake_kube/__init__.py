"""An HTTP-level fake of the Kubernetes API for tests: the real `kubernetes` client talks to it over HTTP."""

from tests.fake_kube.fake import Call, FakeKube, TlsFiles

__all__ = ["Call", "FakeKube", "TlsFiles"]
