"""Model adapters: one class per model family owns everything family-specific, so that the
server hosts any family through one interface (LitServe's LitAPI and KServe's Model play
this part): the input spec and its decoding, the route tables and their FLOPs, the modules
that backends run, and the task specs whose kinds encode outputs.

Families are plug-ins: each is an entry point of the group `trunkline.families` whose name is
what a checkpoint's `config.json` gives in its `family` field ("image" when absent) and whose
value is its adapter class (the bundled families register the same way, in pyproject.toml; this
module imports none of them). A family's class declares the `adapter_api` it was built for;
the server serves only families of its own `ADAPTER_API` (docs/adapters.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import nn

from models.config import TaskSpec
from models.routes import Route

# the adapter interface's version: bumped on a change a family must follow (a method it must
# implement, a changed signature or meaning); a family declares the one it implements
ADAPTER_API = 1
ENTRY_POINT_GROUP = "trunkline.families"
log = logging.getLogger("trunkline.families")


class InputError(ValueError):
    """An input that cannot be decoded; `field` names where it is in the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message if field in message else f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Tensor:
    """One Open Inference Protocol input tensor, as the request carried it: `data` from
    JSON or `raw` bytes from the binary extension (exactly one of them)."""

    name: str
    datatype: str
    shape: list[int]
    data: list | None = None
    raw: bytes | None = None


class ModelAdapter:
    """The interface the server uses; a family subclasses it."""

    family: ClassVar[str]  # its entry point's name, and config.json's `family`
    adapter_api: ClassVar[int]  # the ADAPTER_API it implements; each family sets it itself
    input_name: ClassVar[str]  # the v1 instance key and the OIP input tensor name
    # the JSON schema of a v1 instance, for the OpenAPI document
    instance_schema: ClassVar[dict] = {"type": "object"}

    def __init__(self, path: Path, name: str, version: str) -> None:
        self.path, self.name, self.version = path, name, version

    # -- what the model is ------------------------------------------------------------
    @property
    def tasks(self) -> dict[str, TaskSpec]:
        raise NotImplementedError

    @property
    def route_rows(self) -> dict[str, list[dict]]:
        """routes.json: per task its route table (id, flops, flops_fraction, score, params)."""
        raise NotImplementedError

    def input_metadata(self) -> dict:
        """What /v1/models/{m} says of the input."""
        raise NotImplementedError

    def tensor_inputs(self) -> list[dict]:
        """The OIP input metadata."""
        raise NotImplementedError

    def output_shape(self, task: str) -> list[int]:
        """Per-instance shape of a task's dense output (unused by pooled kinds)."""
        return []

    def experts(self, task: str, k: int) -> list[list[int]]:
        """The experts a task's path uses at k, per task-zone block (for receipts)."""
        raise NotImplementedError

    # -- FLOPs (routing asks these) ---------------------------------------------------
    def request_flops(self, routes: dict[str, Route]) -> int:
        """FLOPs per sample: the trunk the routes share, once, then each task's path."""
        raise NotImplementedError

    def full_flops(self, tasks: list[str]) -> int:
        raise NotImplementedError

    def flops_fraction(self, routes: dict[str, Route]) -> float:
        """What budgets compare: FLOPs of the routes / FLOPs of the same tasks' full route (a
        family whose FLOPs depend on the input, as text's on its length, returns the largest
        over the inputs it accepts, so that no request runs above its budget)."""
        return self.request_flops(routes) / self.full_flops(list(routes))

    def row_flops(self, decoded, routes: dict[str, Route], trunk: bool = True) -> np.ndarray:
        """FLOPs of each decoded instance through `routes` [N]: the trunk once and each task's
        path, or the paths alone (`trunk=False`: what a rung on a trunk already run costs)."""
        n = len(decoded)
        if trunk:
            return np.full(n, float(self.request_flops(routes)))
        return np.full(n, float(self.request_flops(routes) - self.trunk_flops(next(iter(routes.values())))))

    def row_full_flops(self, decoded, tasks: list[str]) -> np.ndarray:
        """FLOPs of each instance through the same tasks' full route [N] (fractions divide by it)."""
        return np.full(len(decoded), float(self.full_flops(tasks)))

    def trunk_flops(self, route: Route) -> int:
        """FLOPs per sample of the trunk `route` runs, alone."""
        raise NotImplementedError

    # -- labelled data (offline: calibration and benchmarks; needs the data extra) -------
    def labelled(self, split: str) -> dict[str, tuple[object, np.ndarray]]:
        """Per task, (decoded inputs, targets) of a split: "validation" (what route tables and
        temperatures are fitted on) or "test" (held out)."""
        raise NotImplementedError(f"the {self.family} family has no labelled data to calibrate on")

    # -- decoding ---------------------------------------------------------------------
    def decode_instance(self, value: object, field: str) -> np.ndarray:
        """One /v1 instance's input value -> the model's input for it (raises InputError)."""
        raise NotImplementedError

    def decode_tensor(self, tensor: Tensor, field: str) -> np.ndarray:
        """An OIP input tensor -> the model's input batch (raises InputError)."""
        raise NotImplementedError

    def join(self, decoded: list):
        """One request's instances decoded one by one (/v1) -> the request's decoded inputs."""
        return np.concatenate(decoded)

    def describe(self, decoded, routes: dict[str, Route]) -> dict | None:
        """Receipt fields that depend on the inputs (text: tokens, truncated, FLOPs at the
        request's length), or None."""
        return None

    def take(self, decoded, rows: np.ndarray):
        """Some instances of decoded inputs (the rows an escalation runs again)."""
        return decoded[rows]

    def stack(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Requests' decoded inputs -> one batch for the trunk."""
        return np.concatenate(inputs)

    def batches(self, inputs: list) -> list[tuple[np.ndarray, np.ndarray]]:
        """Requests' decoded inputs -> the trunk's input batches, each with its rows (indices
        into the requests' instances, in order). One batch here; a family with ragged inputs
        (text) groups rows of similar length to bound padding."""
        batch = self.stack(inputs)
        return [(np.arange(len(batch)), batch)]

    def example_batch(self, n: int) -> np.ndarray:
        """A batch of n synthetic inputs, for calibration and export."""
        raise NotImplementedError

    # -- what backends run ------------------------------------------------------------
    def trunk_module(self, route: Route) -> nn.Module:
        """An ordinary module: batch -> trunk tokens, for the trunk `route` runs."""
        raise NotImplementedError

    def path_module(self, task: str, route: Route) -> nn.Module:
        """An ordinary module: (tokens, batch) -> the task's probabilities at `route`."""
        raise NotImplementedError

    def export_trunk(self, route: Route, out: Path) -> Path:
        """The trunk `route` runs as an ONNX graph (input `input_name`, output tokens)."""
        raise NotImplementedError

    def export_path(self, task: str, route: Route, out: Path) -> Path:
        """A task path as an ONNX graph (inputs `tokens` and `input_name`)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash of the checkpoint's files: keys caches (ONNX graphs, calibration)."""
        from models.export import EXPORT_VERSION

        digest = hashlib.sha256(f"{self.family} export-{EXPORT_VERSION}".encode())
        files = (
            p for p in self.path.rglob("*") if p.is_file() and p.relative_to(self.path).parts[0] != "onnx"
        )
        for file in sorted(files):
            digest.update(str(file.relative_to(self.path)).encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Family:
    """An installed model family: an entry point of the group `trunkline.families`, and what
    loading it gave (its adapter class, or why it cannot serve)."""

    name: str
    target: str  # the entry point's value, "module:Class"
    package: str  # the distribution that declares it
    version: str
    adapter: type[ModelAdapter] | None = None
    error: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.package} {self.version}"


def _api_of(cls: type) -> int | None:
    """The `adapter_api` a family's class declares itself (the base class's is no answer)."""
    for klass in cls.__mro__:
        if klass is ModelAdapter:
            return None
        if "adapter_api" in vars(klass):
            return vars(klass)["adapter_api"]
    return None


def _load(entry: metadata.EntryPoint) -> Family:
    dist = entry.dist
    family = Family(entry.name, entry.value, dist.name if dist else "?", dist.version if dist else "?")
    try:
        cls = entry.load()
    except Exception as e:  # noqa: BLE001 - any error of a plug-in's import is reported, not raised
        return replace(family, error=f"failed to import {entry.value}: {type(e).__name__}: {e}")
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        return replace(family, error=f"{entry.value} is not a models.adapter.ModelAdapter subclass")
    api = _api_of(cls)
    if api != ADAPTER_API:
        built = "declares no adapter_api" if api is None else f"is built for adapter API {api!r}"
        return replace(
            family, error=f"{entry.value} {built}; this server has adapter API {ADAPTER_API}"
        )
    if getattr(cls, "family", entry.name) != entry.name:
        return replace(
            family, error=f"{entry.value}.family is {cls.family!r}, its entry point's name {entry.name!r}"
        )
    return replace(family, adapter=cls)


@functools.cache
def installed() -> dict[str, Family]:
    """Every family installed, by name, each loaded once: the bundled `image` and `text` and any
    plug-in, whether it loads or not (`error` says why not). A second distribution declaring a
    name already taken is reported, never swapped in."""
    found: dict[str, Family] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found:
            dist = entry.dist.name if entry.dist else "?"
            log.warning(
                "model family %r of %s ignored: %s has it", entry.name, dist, found[entry.name].origin
            )
            continue
        found[entry.name] = family = _load(entry)
        if family.error:
            log.warning("model family %r (%s) cannot serve: %s", family.name, family.origin, family.error)
    return dict(sorted(found.items()))


def families() -> dict[str, type[ModelAdapter]]:
    """The families that can serve, by name: their adapter classes."""
    return {name: f.adapter for name, f in installed().items() if f.adapter is not None}


def family_of(path: Path) -> str:
    """The family named by a checkpoint's config.json ("image" when it names none)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "image"  # the adapter's own load reports what is wrong with the file
    return config.get("family", "image") if isinstance(config, dict) else "image"


def load_adapter(path: str | Path, name: str | None = None, version: str = "1") -> ModelAdapter:
    """The adapter of the checkpoint at `path` (a directory or a bundled model's name)."""
    from models.checkpoint import CheckpointError, resolve  # noqa: PLC0415

    path = resolve(path)
    family, found = family_of(path), installed()
    if family not in found:
        raise CheckpointError(
            f"{path / 'config.json'}: model family {family!r} is not installed (installed: "
            f"{', '.join(found) or 'none'}); install the Python package that provides it, one with "
            f"a {ENTRY_POINT_GROUP!r} entry point named {family!r} (docs/adapters.md)"
        )
    if found[family].adapter is None:
        raise CheckpointError(
            f"{path / 'config.json'}: model family {family!r} ({found[family].origin}) cannot serve: "
            f"{found[family].error}"
        )
    return found[family].adapter(path, name or path.name, version)
