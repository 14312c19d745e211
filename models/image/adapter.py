"""The image family's model adapter: MNIST-Scenes-style checkpoints (a conv stem and
transformer trunk over one-channel images), served through `models.adapter.ModelAdapter`."""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import nn

from models.adapter import InputError, ModelAdapter, Tensor
from models.config import TaskSpec
from models.image import checkpoint, export
from models.image.flops import ConfigFlops, trunk_flops
from models.routes import Route

DTYPES = {"UINT8": np.uint8, "FP32": np.float32}


class ImageAdapter(ModelAdapter):
    adapter_api = 1
    family = "image"
    input_name = "image"
    instance_schema = {
        "type": "object",
        "properties": {
            "image": {
                "oneOf": [
                    {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
                    {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 255}},
                        "description": "rows of pixels (the model's height x width)",
                    },
                ]
            }
        },
        "required": ["image"],
        "additionalProperties": False,
    }

    def __init__(self, path: Path, name: str, version: str) -> None:
        super().__init__(path, name, version)
        self.model, self._tables = checkpoint.load(path)
        self.cfg = self.model.cfg
        self.spec = self.cfg.input
        self._tasks = {t.name: t for t in self.cfg.tasks}
        self._flops = ConfigFlops(self.cfg)

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return self._tasks

    @property
    def route_rows(self) -> dict[str, list[dict]]:
        return self._tables

    @property
    def shape(self) -> tuple[int, int]:
        return self.spec.height, self.spec.width

    def input_metadata(self) -> dict:
        return {
            "name": "image",
            "shape": list(self.shape),
            "dtype": self.spec.dtype,
            "formats": ["base64 PNG", "nested list 0-255"],
        }

    def tensor_inputs(self) -> list[dict]:
        return [{"name": "image", "datatype": "UINT8", "shape": [-1, *self.shape]}]

    def output_shape(self, task: str) -> list[int]:
        return list(self.shape)

    def experts(self, task: str, k: int) -> list[list[int]]:
        return self.model.experts(task, k)

    def request_flops(self, routes: dict[str, Route]) -> int:
        return self._flops.request_flops(routes)

    def full_flops(self, tasks: list[str]) -> int:
        return self._flops.full_flops(tasks)

    def trunk_flops(self, route: Route) -> int:
        return trunk_flops(self.cfg, route.width)

    def labelled(self, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Validation: the scenes route tables were built on; test: the card's held-out scenes."""
        from models.image.data import make_scenes
        from models.image.train import TEST_SEED, VAL_SEED, Recipe

        file = self.path / "recipe.json"
        recipe = json.loads(file.read_text()) if file.is_file() else {}
        if split == "validation":
            scenes = make_scenes(recipe.get("val_scenes", Recipe.val_scenes), "train", seed=VAL_SEED)
        elif split == "test":
            scenes = make_scenes(recipe.get("test_scenes", Recipe.test_scenes), "test", seed=TEST_SEED)
        else:
            raise ValueError(f"unknown split {split!r}, expected 'validation' or 'test'")
        decoded = self._scaled(scenes.images)
        targets = scenes.targets()
        return {t: (decoded, np.asarray(targets[t])) for t in self.tasks}

    # -- decoding: uint8 pixels, scaled by the input spec only --------------------------
    def _scaled(self, pixels: np.ndarray) -> np.ndarray:
        return pixels.astype(np.float32) * np.float32(self.spec.scale)

    def decode_instance(self, value: object, field: str) -> np.ndarray:
        if isinstance(value, str):
            return self._scaled(decode_png(value, field, self.shape))[None]
        if isinstance(value, list):
            return self._scaled(decode_pixel_rows(value, field, self.shape))[None]
        h, w = self.shape
        raise InputError(field, f"must be a base64 PNG string or a {h}x{w} nested list of numbers 0-255")

    def decode_tensor(self, tensor: Tensor, field: str) -> np.ndarray:
        """UINT8 (0-255) or FP32 (already scaled to [0, 1]), shape [N, H, W] or [N, 1, H, W]."""
        if tensor.datatype not in DTYPES:
            raise InputError(
                f"{field}.datatype", f"image datatype must be UINT8 or FP32, got {tensor.datatype}"
            )
        shape = list(tensor.shape)
        if len(shape) == 4 and shape[1] == 1:
            shape = [shape[0], shape[2], shape[3]]
        h, w = self.shape
        if len(shape) != 3 or shape[1:] != [h, w] or shape[0] < 1:
            raise InputError(f"{field}.shape", f"image shape must be [N, {h}, {w}], got {tensor.shape}")
        dtype, count = np.dtype(DTYPES[tensor.datatype]), int(np.prod(shape))
        if tensor.raw is not None:
            if len(tensor.raw) != count * dtype.itemsize:
                raise InputError(
                    f"{field}.parameters.binary_data_size",
                    f"binary_data_size {len(tensor.raw)} does not match shape {tensor.shape} of "
                    f"{tensor.datatype} ({count * dtype.itemsize} bytes)",
                )
            array = np.frombuffer(tensor.raw, dtype=dtype)
        else:
            array = _numbers(tensor.data, f"{field}.data")
            if array.size != count:
                raise InputError(
                    f"{field}.data", f"image data has {array.size} values; shape {tensor.shape} needs {count}"
                )
        array = array.reshape(shape)
        if dtype == np.uint8:
            if array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255):
                raise InputError(f"{field}.data", "UINT8 image values must be in [0, 255]")
            return self._scaled(array)
        if array.min() < 0 or array.max() > 1:
            raise InputError(f"{field}.data", "FP32 image values must be in [0, 1] (already scaled)")
        return array.astype(np.float32)

    def stack(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(inputs)[:, None]  # [B, 1, H, W]

    def example_batch(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        return rng.random((n, self.spec.channels, *self.shape), np.float32)

    # -- what backends run ------------------------------------------------------------
    def trunk_module(self, route: Route) -> nn.Module:
        return self.model.extract_trunk(route.width)

    def path_module(self, task: str, route: Route) -> nn.Module:
        return self.model.extract_path(task, route)

    def export_trunk(self, route: Route, out: Path) -> Path:
        return export.export_trunk(self.model, route.width, out)

    def export_path(self, task: str, route: Route, out: Path) -> Path:
        return export.export_path(self.model, task, route, out)


def _numbers(data: object, field: str) -> np.ndarray:
    """JSON numbers as float64; booleans, strings and nulls are refused, never coerced."""
    try:
        array = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(field, "must contain only numbers") from None
    if array.size and not _all_numbers(data):
        raise InputError(field, "must contain only numbers (not booleans)")
    if not np.isfinite(array).all():
        raise InputError(field, "must contain only finite numbers")
    return array


NUMBER_TYPES = frozenset((int, float))  # exactly: bool is an int subclass, and not a number here


def _all_numbers(data: object) -> bool:
    if isinstance(data, list):
        if data and isinstance(data[0], list):
            return all(_all_numbers(x) for x in data)
        return set(map(type, data)) <= NUMBER_TYPES  # one C-level pass over a row
    return type(data) in NUMBER_TYPES


def decode_png(data: str, field: str, shape: tuple[int, int]) -> np.ndarray:
    """A base64 PNG (a `data:image/png;base64,` prefix is accepted) -> uint8 [H, W]."""
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64") or not header.startswith("data:image/png"):
            raise InputError(field, "a data URL must be 'data:image/png;base64,<base64 PNG>'")
    # a PNG of the input's size is at most a few KiB (even 16-bit RGBA, stored uncompressed):
    # anything much larger carries something else (a huge text chunk, a bomb), refused unread
    limit = max(64 * 1024, 16 * shape[0] * shape[1])
    if len(data) > limit * 4 // 3 + 4:
        raise InputError(field, f"is over {limit} bytes: a {shape[1]}x{shape[0]} PNG is far smaller")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "is not valid base64 (expected a base64-encoded PNG)") from None
    try:
        # the header alone: its size is checked before any pixel is decoded or allocated
        with Image.open(io.BytesIO(raw), formats=("PNG",)) as img:
            if img.size != (shape[1], shape[0]):
                raise InputError(
                    field, f"must be {shape[1]}x{shape[0]} pixels, got {img.size[0]}x{img.size[1]}"
                )
            if getattr(img, "is_animated", False):
                raise InputError(field, "must be a single-frame PNG, got an animated one")
            return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise InputError(field, "must be a PNG image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # truncated or corrupt data; PIL raises ValueError for an oversized text chunk
        raise InputError(field, "is not a decodable PNG image") from None


def decode_pixel_rows(data: list, field: str, shape: tuple[int, int]) -> np.ndarray:
    """A nested list of H rows of W numbers 0-255 -> uint8 [H, W]."""
    h, w = shape
    if len(data) != h or any(not isinstance(r, list) or len(r) != w for r in data):
        got = f"a list of {len(data)}" if data and not isinstance(data[0], list) else "another shape"
        raise InputError(field, f"must be {h} rows of {w} numbers 0-255 (grayscale), got {got}")
    array = _numbers(data, field)
    if array.size != h * w:  # e.g. rows of [r, g, b] triples
        raise InputError(field, f"must be {h} rows of {w} numbers 0-255 (grayscale, one number a pixel)")
    array = array.reshape(h, w)
    if array.min() < 0 or array.max() > 255:
        raise InputError(field, "values must be numbers in [0, 255]")
    return array.round().astype(np.uint8)
