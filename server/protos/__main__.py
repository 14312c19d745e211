"""Regenerate protos.binpb from the .proto files: `python -m server.protos` (grpcio-tools)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from server.protos import DESCRIPTORS, HERE, SOURCES


def compile_descriptors() -> bytes:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "protos.binpb"
        rc = protoc.main(["protoc", f"-I{HERE}", f"--descriptor_set_out={out}", *SOURCES])
        if rc != 0:
            sys.exit(f"protoc failed ({rc})")
        return out.read_bytes()


if __name__ == "__main__":
    DESCRIPTORS.write_bytes(compile_descriptors())
    print(f"wrote {DESCRIPTORS} ({DESCRIPTORS.stat().st_size} bytes)")
