"""Domain errors of the engine and the repository. They know nothing of HTTP: each router
maps them to its status codes and wire format (`server.http`), as KServe's data plane does."""

from __future__ import annotations


class TrunklineError(Exception):
    """An answer other than a result. `field` names the part of the request at fault."""

    code = "error"

    def __init__(self, message: str, field: str | None = None, retry_after: float | None = None) -> None:
        if field and field not in message:
            message = f"{field}: {message}"  # the message always names the field at fault
        super().__init__(message)
        self.message, self.field, self.retry_after = message, field, retry_after


class InvalidInput(TrunklineError):
    code = "invalid_input"


class InvalidJSON(InvalidInput):
    code = "invalid_json"


class BadEncoding(InvalidInput):
    """A body whose content-encoding does not decode."""

    code = "bad_encoding"


class InvalidValue(InvalidInput):
    """A well-formed request asking for something this model cannot do (422 in both APIs)."""


class UnknownTask(InvalidValue):
    code = "unknown_task"


class BudgetTooSmall(InvalidValue):
    code = "budget_too_small"


class TooLarge(TrunklineError):
    """Body or instance count over a limit."""

    code = "too_large"


class UnsupportedMediaType(TrunklineError):
    code = "unsupported_media_type"


class Unauthorized(TrunklineError):
    code = "unauthorized"


class ModelNotFound(TrunklineError):
    code = "unknown_model"


class ModelNotReady(TrunklineError):
    """Loading or calibrating: try again shortly."""

    code = "not_ready"


class ModelUnloading(TrunklineError):
    code = "unloading"


class ShuttingDown(TrunklineError):
    code = "shutting_down"


class QueueFull(TrunklineError):
    code = "queue_full"


class Overloaded(TrunklineError):
    """The request cannot be answered within its timeout, even at its min_budget."""

    code = "overloaded"


class DeadlineExceeded(Overloaded):
    """The request's timeout passed while it waited in the queue; it never ran."""

    code = "deadline_exceeded"


class LoadFailed(TrunklineError):
    """A model could not be loaded; the version served before (if any) keeps serving."""

    code = "load_failed"


class ControlDisabled(TrunklineError):
    """Repository load/unload asked of a server not in explicit model-control mode."""

    code = "model_control_disabled"


class Internal(TrunklineError):
    """A bug: answered 500 without its details (they go to the log)."""

    code = "internal"
