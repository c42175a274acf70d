"""static/js/protocol.js decodes arrays exactly as app/protocol.py encodes them: every dtype,
float16 by hand (special values included), uint8 with its scale, and base64 (HTTP) data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.protocol import encode_array, jsonable, quantize_unit

pytestmark = pytest.mark.browser

DECODE = """async (wire) => {
  const { decodeArray } = await import("/static/js/protocol.js");
  const array = decodeArray(wire);
  const values = Array.from(array.data, (v) => (Number.isFinite(v) ? v : String(v)));
  return { dtype: array.dtype, shape: array.shape, scale: array.scale, values };
}"""

FLOAT16_CASES = [0.0, -0.0, 1.0, -2.5, 0.1, 65504.0, 6e-8, 1e-5, math.inf, -math.inf]


def decode(page, wire: dict) -> dict:
    return page.evaluate(DECODE, jsonable(wire))


def as_python(value):
    return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}.get(value, value)


@pytest.fixture()
def app_page(page, live_server):
    page.goto(live_server)
    return page


def test_float16_is_decoded_by_hand_exactly(app_page):
    array = np.array(FLOAT16_CASES, dtype=np.float16)
    decoded = decode(app_page, encode_array(array, "float16"))
    assert decoded["dtype"] == "float16" and decoded["shape"] == [len(FLOAT16_CASES)]
    assert [as_python(v) for v in decoded["values"]] == array.astype(np.float64).tolist()
    nan = decode(app_page, encode_array(np.array([np.nan], dtype=np.float16), "float16"))
    assert nan["values"] == ["NaN"]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int32", "float32"])
def test_integer_and_float32_arrays_keep_shape_and_values(app_page, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 3 - (5 if dtype in ("int32", "float32") else 0)).astype(dtype)
    decoded = decode(app_page, encode_array(array, dtype))
    assert decoded["shape"] == [2, 3, 4]
    assert decoded["values"] == array.ravel().tolist()


def test_quantized_uint8_carries_its_scale(app_page):
    values = np.array([[0.0, 0.5], [0.25, 1.0]])
    decoded = decode(app_page, quantize_unit(values))
    assert decoded["scale"] == pytest.approx(1 / 255)
    assert np.allclose(np.array(decoded["values"]) * decoded["scale"], values.ravel(), atol=0.5 / 255)


def test_a_wrong_byte_count_is_an_error(app_page):
    wire = jsonable(encode_array(np.zeros(3, dtype=np.float32), "float32"))
    wire["shape"] = [4]
    message = app_page.evaluate(
        f"async (wire) => {{ try {{ await ({DECODE})(wire); return ''; }} catch (e) {{ return e.message; }} }}", wire
    )
    assert "bytes" in message
