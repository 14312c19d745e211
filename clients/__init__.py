"""Python client for Trunkline (sync and async), independent of the server's packages."""

from clients.client import (
    AsyncClient,
    Client,
    ClientError,
    OverloadedError,
    Prediction,
    Receipt,
    ServerError,
    TrunklineError,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "OverloadedError",
    "Prediction",
    "Receipt",
    "ServerError",
    "TrunklineError",
]
