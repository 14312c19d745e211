"""Server settings: flags and `TRUNKLINE_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from routing import Budget

CACHE = Path.home() / ".cache" / "trunkline"


class Settings(BaseSettings):
    """Every field is also the environment variable TRUNKLINE_<FIELD> (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="TRUNKLINE_", extra="ignore")

    model: Annotated[list[str], NoDecode] = Field(
        [], description="checkpoint directories or bundled model names to serve (comma-separated)"
    )
    model_repository: Path | None = Field(
        None, description="a folder of model folders, DIR/<name>/ or DIR/<name>/<version>/ (as Triton)"
    )
    model_control_mode: Literal["none", "explicit"] = Field(
        "none", description="explicit: the repository API loads and unloads models at run time"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="the Open Inference Protocol over gRPC (as Triton's); 0: off"
    )
    backend: Literal["torch", "onnxruntime"] = Field(
        "onnxruntime",
        description="onnxruntime: every route an exported graph (fused attention; batch 1 2-4x faster than "
        "torch eager here); torch: the extracted route modules, eager (no export at a cold start)",
    )
    threads: int = Field(2, ge=1, description="intra-op threads of the model compute")
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="where routes run: cuda needs a GPU and onnxruntime-gpu (backend onnxruntime) or "
        "a CUDA build of torch (backend torch); without them the server refuses to start",
    )
    compute_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="niceness of the compute thread and its intra-op threads above the event "
        "loop's, so that parsing, admission and answers run first on a saturated machine; "
        "it also yields compute to every other process on the machine",
    )
    workers: int = Field(
        1,
        ge=1,
        description="server processes sharing the port, each with its own models and compute "
        "thread (model-control-mode none only: a load or unload would reach one of them)",
    )
    default_budget: str = Field("max", description="budget of requests that name none")
    max_batch_size: int = Field(64, ge=1)
    batch_wait_ms: float = Field(
        0.0, ge=0, description="how long a batch waits to fill; 0: batches form while the previous one runs"
    )
    degrade_headroom: float = Field(
        0.25,
        gt=0,
        le=1,
        description="a request with timeout_ms and min_budget steps down to a cheaper route while its "
        "estimated finish exceeds this fraction of timeout_ms",
    )
    load_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="the share of the compute thread that building and calibrating a model being "
        "loaded may take while other models serve (1: as much as serving)",
    )
    inline_batch_ms: float = Field(
        3.0,
        ge=0,
        description="a batch estimated (by calibration) to take at most this long runs on the event "
        "loop's thread when the compute thread is idle, saving the hand-off to it and back; 0: never",
    )
    max_queue: int = Field(
        1024,
        ge=1,
        description="queued instances per trunk before 429 (a request that may degrade steps down "
        "to a cheaper trunk with room first)",
    )
    max_instances: int = Field(256, ge=1, description="instances per request")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    batch_buckets: list[int] = Field([1, 8, 32, 64], description="calibrated batch sizes")
    calibration_rounds: int = Field(3, ge=1)
    priority_levels: int = Field(3, ge=1, description="request priorities 1 (first) .. N; default middle")
    auth_token: SecretStr | None = Field(
        None, description="require 'Authorization: Bearer <token>' (never printed: a secret)"
    )
    onnx_dir: Path = Field(CACHE / "onnx", description="where exported ONNX graphs are cached")
    cache_dir: Path = Field(CACHE, description="calibration results, per checkpoint and machine")
    drain_timeout_s: float = Field(
        20.0,
        ge=0,
        description="on SIGTERM, how long in-flight requests may finish (below Kubernetes' default "
        "30 s grace period, so that the exit is the server's and not a SIGKILL)",
    )
    log_level: str = "info"
    access_log: bool = Field(False, description="log every request (uvicorn's access log)")
    # test hooks of the reliability suite (server/hooks.py); never set them in production
    test_gate: Path | None = Field(None, description="test hook: while this file exists, batches wait")
    test_poison: bool = Field(False, description="test hook: a batch with a constant input fails")
    test_leak_kib: int = Field(0, ge=0, description="test hook: KiB kept for good per prediction")

    @model_validator(mode="after")
    def _workers(self) -> Settings:
        if self.workers > 1 and self.model_control_mode != "none":
            raise ValueError("workers > 1 needs model_control_mode none: each worker has its own models")
        return self

    @field_validator("default_budget")
    @classmethod
    def _budget(cls, value: str) -> str:
        Budget.from_text(value)  # raises with the accepted forms
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value
