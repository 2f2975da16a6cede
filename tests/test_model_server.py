"""The model server's request parsing: the seed's body and its common variants, and clear refusals."""

import numpy as np
import pytest

from models.base import InputError
from script.serve import extract_rows


def test_seed_body_and_variants() -> None:
    seed = {"userId": "user-1234", "data": {"features": [[5.1, 3.5, 1.4], [0, 0, 1]]}}
    assert extract_rows(seed, 3, 10).tolist() == [[5.1, 3.5, 1.4], [0, 0, 1]]
    assert extract_rows({"features": [[1, 2, 3]]}, 3, 10).shape == (1, 3)
    assert extract_rows({"instances": [[1, 2, 3]]}, 3, 10).dtype == np.float64
    assert extract_rows({"data": {"features": [1, 2, 3]}}, 3, 10).shape == (1, 3)  # one flat row


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ([1, 2, 3], "JSON object"),
        ({"data": {}}, "data.features"),
        ({"data": {"features": []}}, "non-empty"),
        ({"data": {"features": [[1, 2]]}}, "expects 3 features"),
        ({"data": {"features": [[1, 2, 3], [1, 2]]}}, "data.features[1] has 2 values"),
        ({"data": {"features": [[1, "x", 3]]}}, "only numbers"),
        ({"data": {"features": [[1, [2], 3]]}}, "numbers"),
        ({"data": {"features": [[1, 2, 3]] * 11}}, "at most 10"),
    ],
)
def test_bad_payloads_are_refused_clearly(payload: object, words: str) -> None:
    with pytest.raises(InputError) as error:
        extract_rows(payload, 3, 10)
    assert words in str(error.value)
