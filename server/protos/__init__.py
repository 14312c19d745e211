"""The gRPC protocols Trunkline serves, as message classes and service handlers.

The .proto files beside this module are the source; `protos.binpb` is their compiled
descriptor set (`python -m server.protos` regenerates it with grpcio-tools, a dev tool; a
test checks it is current). They load into a private descriptor pool rather than protobuf's
default one, so a process that imports tritonclient's copy of the same `inference.*` messages
(a test, a Ray Serve replica with a Triton client in it) has no clash of names.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HERE = Path(__file__).parent
DESCRIPTORS = HERE / "protos.binpb"
SOURCES = ("inference.proto", "health.proto")

POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file:
    POOL.Add(_file)


def _messages(package: str) -> SimpleNamespace:
    files = [POOL.FindFileByName(s) for s in SOURCES]
    found = {
        name: message_factory.GetMessageClass(d)
        for f in files
        if f.package == package
        for name, d in f.message_types_by_name.items()
    }
    return SimpleNamespace(**found)


inference = _messages("inference")  # inference.ModelInferRequest, ...
health = _messages("grpc.health.v1")


class Malformed:
    """A request whose bytes do not parse as the method's message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _parser(message: type):
    def parse(raw: bytes):
        try:
            return message.FromString(raw)
        except Exception as err:  # noqa: BLE001 - DecodeError, or what upb raises instead
            return Malformed(err)

    return parse


def _checked(fn, name: str, streaming: bool):
    """`fn`, answering INVALID_ARGUMENT for a message that does not parse (gRPC would answer
    INTERNAL, a server error, for the client's mistake)."""

    async def refuse(request: Malformed, context) -> None:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {name} message: {request.error}"
        )

    if streaming:

        async def stream(request, context):
            if isinstance(request, Malformed):
                await refuse(request, context)
            async for item in fn(request, context):
                yield item

        return stream

    async def unary(request, context):
        if isinstance(request, Malformed):
            return await refuse(request, context)
        return await fn(request, context)

    return unary


def service_handler(service: str, servicer: object) -> grpc.GenericRpcHandler:
    """The service's RPCs served by the servicer's methods of the same names (async
    functions for unary answers, async generators for streams)."""
    descriptor = POOL.FindServiceByName(service)
    handlers = {}
    for method in descriptor.methods:
        fn = getattr(servicer, method.name)
        streaming = method.server_streaming
        assert streaming == inspect.isasyncgenfunction(fn), method.name
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            _checked(fn, method.input_type.full_name, streaming),
            request_deserializer=_parser(request),
            response_serializer=response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service, handlers)
