"""The committed descriptor set is what the .proto files compile to, and its messages are the
protocol's: wire-compatible with tritonclient's own generated copy."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from server.protos import DESCRIPTORS, POOL, inference
from server.protos.__main__ import compile_descriptors


def test_the_descriptor_set_is_current():
    assert compile_descriptors() == DESCRIPTORS.read_bytes(), "run: python -m server.protos"


def test_every_message_and_method_matches_tritons_field_for_field():
    ours = POOL.FindServiceByName("inference.GRPCInferenceService")
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    seen = set()

    def same(a, b) -> None:
        if a.full_name in seen:
            return
        seen.add(a.full_name)
        assert a.full_name == b.full_name
        for f in a.fields:
            g = b.fields_by_name[f.name]
            assert (f.number, f.type, f.is_repeated) == (g.number, g.type, g.is_repeated), f.full_name
            if f.message_type is not None:
                same(f.message_type, g.message_type)

    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        same(method.input_type, other.input_type)
        same(method.output_type, other.output_type)
    assert len(seen) > 20


def test_a_request_round_trips_between_the_two_copies():
    theirs = service_pb2.ModelInferRequest(model_name="m", id="7")
    theirs.parameters["task"].string_param = "count"
    t = theirs.inputs.add(name="image", datatype="UINT8", shape=[1, 2])
    t.contents.uint_contents.extend([3, 4])
    ours = inference.ModelInferRequest.FromString(theirs.SerializeToString())
    assert ours.parameters["task"].string_param == "count" and list(
        ours.inputs[0].contents.uint_contents
    ) == [3, 4]
    assert service_pb2.ModelInferRequest.FromString(ours.SerializeToString()) == theirs
