"""Any valid JSON body parses as the standard library parses it, whatever its whitespace and
nesting (orjson 3.13 refused some valid bodies: two spaces of indentation before a long array)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.errors import InvalidInput
from server.http import parse_json
from server.schemas import InferRequest, PredictRequest

WHITESPACE = st.text(alphabet=" \t\n\r", max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
)
VALUES = st.recursive(
    SCALARS | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def spaced(draw, value):
    """`value` as JSON text with arbitrary whitespace around every token."""
    ws = lambda: draw(WHITESPACE)  # noqa: E731
    if isinstance(value, dict):
        items = [f"{ws()}{json.dumps(k)}{ws()}:{draw(spaced(v))}" for k, v in value.items()]
        return f"{ws()}{{{','.join(items) or ws()}}}{ws()}"
    if isinstance(value, list):
        return f"{ws()}[{','.join(draw(spaced(v)) for v in value) or ws()}]{ws()}"
    return f"{ws()}{json.dumps(value)}{ws()}"


@st.composite
def infer_bodies(draw):
    n = draw(st.integers(1, 1200))
    body = {
        "inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [n], "data": [draw(st.integers(0, 255))] * n}
        ],
        "parameters": {"task": "sum", "extra": draw(VALUES)},
    }
    return body, draw(spaced(body))


@settings(max_examples=100, deadline=None)
@given(infer_bodies())
def test_any_whitespace_parses_like_the_standard_library(case):
    body, text = case
    assert json.loads(text) == body
    parsed = parse_json(InferRequest, text.encode())
    assert parsed.model_dump(exclude_none=True) == InferRequest.model_validate(body).model_dump(
        exclude_none=True
    )


def test_indented_long_array_parses():
    """The shape of the README's curl example that orjson 3.13 refused."""
    text = (
        '{  "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 56, 56], "data": ['
        + ", ".join(["0"] * 3136)
        + ']}],\n  "parameters": {"task": "count"}}'
    )
    assert len(parse_json(InferRequest, text.encode()).inputs[0].data) == 3136


@pytest.mark.parametrize("text", ['{"task": "sum", "inputs": [', "[1, 2]", "", "\ufeff{}", '{"task": NaN}'])
def test_invalid_json_is_an_input_error(text):
    with pytest.raises(InvalidInput):
        parse_json(PredictRequest, text.encode())
