"""Image bombs: each refused with a 4xx naming the input, before the full allocation (the peak
resident memory of the server rises < 100 MiB over all of them)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, rows: bytes | None = None, extra: bytes = b"") -> bytes:
    """A grayscale PNG written chunk by chunk (so that a 20,000 x 20,000 one costs no memory here)."""
    if rows is None:
        z, parts, line = zlib.compressobj(9), [], bytes(1 + width)
        for _ in range(height):
            parts.append(z.compress(line))
        parts.append(z.flush())
        rows = b"".join(parts)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _saved(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((56, 56), np.uint8)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _animated() -> bytes:
    frames = [Image.fromarray(np.full((56, 56), v, np.uint8)) for v in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def test_image_bombs_are_4xx_before_the_full_allocation(serve, figure):
    server = serve()
    good = _png(56, 56)
    bombs = {
        "0 bytes": b"",
        "1x1": _png(1, 1),
        "truncated": good[: len(good) // 2],
        "20,000 x 20,000, compressed": _png(20_000, 20_000),
        "10 MB text chunk": _png(56, 56, extra=_chunk(b"tEXt", b"comment\0" + b"x" * 10_000_000)),
        "10 MB compressed text chunk": _png(
            56, 56, extra=_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"x" * 10_000_000))
        ),
        "animated PNG": _animated(),
        "JPEG": _saved("JPEG"),
        "GIF": _saved("GIF"),
        "BMP": _saved("BMP"),
        "WebP": _saved("WEBP"),
        "TIFF": _saved("TIFF"),
    }
    before = _peak_rss_mib(server.proc.pid)
    statuses = {}
    with httpx.Client(timeout=60) as client:
        assert client.post(f"{server.url}/v1/predict", json=_body(good)).status_code == 200
        for name, data in bombs.items():
            r = client.post(f"{server.url}/v1/predict", json=_body(data))
            statuses[name] = r.status_code
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
            assert r.json()["error"]["field"] == "inputs.0.image", (name, r.text[:300])
    rise = _peak_rss_mib(server.proc.pid) - before
    assert rise < 100, rise
    figure("statuses", statuses)
    figure("peak RSS rise (MiB)", round(rise, 1))


def _body(data: bytes) -> dict:
    return {"task": "count", "inputs": [{"image": base64.b64encode(data).decode()}]}
