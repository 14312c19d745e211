"""Trunkline's HTTP server: FastAPI app, batching, backends, metrics, CLI."""

__version__ = "0.1.0"
