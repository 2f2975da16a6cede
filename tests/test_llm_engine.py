"""The CPU engine's streaming: text as tokens come, and a failure that surfaces instead of an empty answer."""

import pytest

from models.llm_chat import Generation, TransformersEngine
from tests.llm_support import make_tiny_model


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    return TransformersEngine(make_tiny_model(tmp_path_factory.mktemp("engine") / "tiny"))


def test_stream_yields_pieces_then_the_summary(engine: TransformersEngine) -> None:
    items = list(engine.stream("hello world", max_tokens=5))
    *pieces, summary = items
    assert isinstance(summary, Generation) and all(isinstance(p, str) for p in pieces)
    assert summary.text == "".join(pieces)
    assert 1 <= summary.completion_tokens <= 5


def test_a_failed_generation_raises_instead_of_ending_like_an_answer(engine: TransformersEngine,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**_: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.model, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(engine.stream("hello", max_tokens=3))
