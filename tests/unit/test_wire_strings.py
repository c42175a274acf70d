"""String lists travel as one joined string with UTF-16 lengths (how JavaScript slices)."""

from __future__ import annotations

import pytest

from app.protocol import encode_strings, jsonable
from tests.wire import decode_strings


@pytest.mark.parametrize("strings", [[], ["a"], ["The", " cat", ""], ["é", "😀", "a😀b", "\u200b", "<s>"]])
def test_strings_round_trip_in_both_forms(strings):
    encoded = encode_strings(strings)
    assert decode_strings(encoded) == strings
    assert decode_strings(jsonable(encoded)) == strings
