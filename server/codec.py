"""Decoding inputs (base64 PNG or nested lists) into uint8 images, with errors that name
the field at fault."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from server.errors import APIError


def decode_png(data: str, field: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(field, f"{field} is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw), formats=("PNG",)) as img:
            if img.size != (shape[1], shape[0]):
                raise APIError(
                    field, f"{field} must be {shape[1]}x{shape[0]} pixels, got {img.size[0]}x{img.size[1]}"
                )
            array = np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise APIError(field, f"{field} must be a PNG image") from None
    except (OSError, Image.DecompressionBombError):
        raise APIError(field, f"{field} is not a decodable PNG image") from None
    return array


def decode_list(data: list, field: str, shape: tuple[int, int]) -> np.ndarray:
    if len(data) != shape[0] or any(not isinstance(r, list) or len(r) != shape[1] for r in data):
        raise APIError(field, f"{field} must be a {shape[0]}x{shape[1]} nested list of numbers 0-255")
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise APIError(field, f"{field} must contain only numbers 0-255") from None
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise APIError(field, f"{field} values must be numbers in [0, 255]")
    return array.round().astype(np.uint8)


def decode_image(value: object, field: str, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(value, str):
        return decode_png(value, field, shape)
    if isinstance(value, list):
        return decode_list(value, field, shape)
    raise APIError(field, f"{field} must be a base64 PNG string or a nested list of numbers")


def encode_png(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
