"""Sync and async clients. Both share `_RequestBuilder`; only the transport differs."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ImageLike = str | Path | bytes | np.ndarray


class TrunklineError(Exception):
    """An error answer from the server: its status, code, message and field."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after = retry_after


class ClientError(TrunklineError):
    """4xx: the request is wrong; the message names the field."""


class OverloadedError(TrunklineError):
    """429 or 503: retry after `retry_after` seconds."""


class ServerError(TrunklineError):
    """5xx other than overload."""


class TransportError(TrunklineError):
    """No answer at all: the server is down, unreachable, or dropped the connection (`status` is 0)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "transport", message)
        self.args = (message,)

    def __str__(self) -> str:
        return self.message


def _transport_error(url: str, exc: httpx.TransportError) -> TransportError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    reason = re.sub(r"^\[Errno -?\d+\] ", "", reason)
    if reason[1:2].islower():  # "Connection refused" -> "connection refused"; "SSL: ..." stays
        reason = reason[:1].lower() + reason[1:]
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return TransportError(f"cannot reach {url}: {reason}")
    return TransportError(f"no answer from {url}: {reason}")


def _known_fields(cls, data: dict) -> dict:
    """The keys of `data` that are fields of dataclass `cls`: a newer server may send more."""
    names = {f.name for f in fields(cls) if f.name != "raw"}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Receipt:
    """What actually ran for a request."""

    tasks: dict[str, dict]
    trunk_width: float
    flops: int
    flops_fraction: float
    budget_requested: str
    degraded: bool
    backend: str
    batch_size: int
    queue_ms: float
    compute_ms: float
    depth: int | None = None  # encoder layers run (text models)
    tokens: list[int] | None = None  # per instance, after truncation (text models)
    truncated: bool | None = None
    confidence: float | None = None  # budget auto: the confidence asked
    flops_total: int | None = None  # budget auto: all instances together
    rows: list[dict] | None = None  # budget auto: per instance its rungs and confidences
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> Receipt:
        """Ignores fields this client does not know; they stay in `raw`."""
        return cls(**_known_fields(cls, data), raw=data)

    def route(self, task: str) -> str:
        return self.tasks[task]["route"]


@dataclass
class Prediction:
    model: str
    outputs: list[dict[str, dict]]  # per instance: task -> output
    receipt: Receipt
    raw: dict = field(repr=False, default_factory=dict)

    def labels(self, task: str) -> list[Any]:
        """Per instance: the label (classification), labels (multi-label), mask (dense) or value
        (regression)."""
        keys = ("label", "labels", "mask", "value")
        return [next((o[task][k] for k in keys if k in o[task]), None) for o in self.outputs]

    @classmethod
    def from_dict(cls, body: dict) -> Prediction:
        """A /v1/predict response body; unknown fields are ignored here and kept in `raw`."""
        return cls(body["model"], body["outputs"], Receipt.from_dict(body["route"]), body)


def encode_image(image: ImageLike) -> str | list:
    """A PNG file path, PNG bytes, or a uint8 array [H, W] -> the wire format."""
    if isinstance(image, (str, Path)):
        image = Path(image).read_bytes()
    if isinstance(image, bytes):
        return base64.b64encode(image).decode()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        return array.tolist()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        err = body.get("error", {})
        if isinstance(err, str):
            err = {"message": err}
    except ValueError:
        err = {"message": response.text}
    retry = response.headers.get("retry-after")
    args = (
        response.status_code,
        err.get("code", "error"),
        err.get("message", ""),
        err.get("field"),
        float(retry) if retry else None,
    )
    if response.status_code in (429, 503):
        raise OverloadedError(*args)
    if response.status_code >= 500:
        raise ServerError(*args)
    raise ClientError(*args)


class _RequestBuilder:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    @staticmethod
    def predict_payload(images, task, tasks, texts=None, **options) -> dict:
        """The /v1 body; `options` (budget, confidence, ...) left as None are left out."""
        if texts is not None:  # a text model: one string or a list of them
            body: dict[str, Any] = {
                "inputs": [{"text": t} for t in ([texts] if isinstance(texts, str) else texts)]
            }
        else:
            if isinstance(images, (str, Path, bytes)) or (
                isinstance(images, np.ndarray) and images.ndim == 2
            ):
                images = [images]
            body = {"inputs": [{"image": encode_image(im)} for im in images]}
        if tasks is not None:
            body["tasks"] = list(tasks)
        else:
            body["task"] = task
        body.update({k: v for k, v in options.items() if v is not None})
        return body

    @staticmethod
    def prediction(response: httpx.Response) -> Prediction:
        _raise_for(response)
        return Prediction.from_dict(response.json())

    @staticmethod
    def json(response: httpx.Response) -> dict:
        _raise_for(response)
        return response.json()


class Client(_RequestBuilder):
    """Blocking client. `with Client(url) as c: c.predict(images, task="sum", budget="low")`."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(url, token)
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise _transport_error(self.url, e) from e

    def predict(
        self,
        images,
        task: str | None = None,
        *,
        tasks=None,
        budget=None,
        confidence=None,
        max_budget=None,
        min_budget=None,
        timeout_ms=None,
        latency_ms=None,
        task_weights=None,
        mask_format=None,
        model=None,
    ) -> Prediction:
        """`budget`: a fraction, a tier, or "auto" (each instance climbs until its answer's
        calibrated confidence reaches `confidence`, default 0.9, at most up to `max_budget`)."""
        payload = self.predict_payload(
            images, task, tasks, budget=budget, confidence=confidence, max_budget=max_budget,
            min_budget=min_budget, timeout_ms=timeout_ms, latency_ms=latency_ms,
            task_weights=task_weights, mask_format=mask_format, model=model,
        )  # fmt: skip
        return self.prediction(self._send("POST", "/v1/predict", json=payload))

    def predict_text(
        self, texts, task: str | None = None, *, model: str | None = None, tasks=None, budget=None,
        confidence=None, max_budget=None, min_budget=None, timeout_ms=None, latency_ms=None,
        task_weights=None,
    ) -> Prediction:  # fmt: skip
        """Texts (a string or a list) to a text model: `predict_text(["hi"], "spam", model="text-tasks")`."""
        payload = self.predict_payload(
            None, task, tasks, texts, budget=budget, confidence=confidence, max_budget=max_budget,
            min_budget=min_budget, timeout_ms=timeout_ms, latency_ms=latency_ms,
            task_weights=task_weights, model=model,
        )  # fmt: skip
        return self.prediction(self._send("POST", "/v1/predict", json=payload))

    def models(self) -> list[dict]:
        return self.json(self._send("GET", "/v1/models"))["models"]

    def model(self, name: str) -> dict:
        return self.json(self._send("GET", f"/v1/models/{name}"))

    def ready(self) -> bool:
        return self._send("GET", "/v2/health/ready").status_code == 200

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_RequestBuilder):
    """Asyncio client with the same methods as `Client`, awaited."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(url, token)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise _transport_error(self.url, e) from e

    async def predict(
        self,
        images,
        task: str | None = None,
        *,
        tasks=None,
        budget=None,
        confidence=None,
        max_budget=None,
        min_budget=None,
        timeout_ms=None,
        latency_ms=None,
        task_weights=None,
        mask_format=None,
        model=None,
    ) -> Prediction:
        """`budget`: a fraction, a tier, or "auto" (each instance climbs until its answer's
        calibrated confidence reaches `confidence`, default 0.9, at most up to `max_budget`)."""
        payload = self.predict_payload(
            images, task, tasks, budget=budget, confidence=confidence, max_budget=max_budget,
            min_budget=min_budget, timeout_ms=timeout_ms, latency_ms=latency_ms,
            task_weights=task_weights, mask_format=mask_format, model=model,
        )  # fmt: skip
        return self.prediction(await self._send("POST", "/v1/predict", json=payload))

    async def predict_text(
        self, texts, task: str | None = None, *, model: str | None = None, tasks=None, budget=None,
        confidence=None, max_budget=None, min_budget=None, timeout_ms=None, latency_ms=None,
        task_weights=None,
    ) -> Prediction:  # fmt: skip
        """Texts (one string or a list) to a text model."""
        payload = self.predict_payload(
            None, task, tasks, texts, budget=budget, confidence=confidence, max_budget=max_budget,
            min_budget=min_budget, timeout_ms=timeout_ms, latency_ms=latency_ms,
            task_weights=task_weights, model=model,
        )  # fmt: skip
        return self.prediction(await self._send("POST", "/v1/predict", json=payload))

    async def models(self) -> list[dict]:
        return self.json(await self._send("GET", "/v1/models"))["models"]

    async def model(self, name: str) -> dict:
        return self.json(await self._send("GET", f"/v1/models/{name}"))

    async def ready(self) -> bool:
        return (await self._send("GET", "/v2/health/ready")).status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
