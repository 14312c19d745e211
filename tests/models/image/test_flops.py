"""The analytic FLOPs counter against a count by hand."""

from models.config import RouteSpace, TaskSpec
from models.image.config import InputSpec, ModelConfig, StemConfig
from models.image.flops import full_flops, request_flops, task_flops, trunk_flops
from models.routes import Route


def tiny_config() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        input=InputSpec(height=8, width=8),
        stem=StemConfig(channels=(2,), strides=(2, 2)),
        dim=8,
        heads=2,
        head_dim=4,
        mlp_hidden=16,
        trunk_depth=1,
        task_depth=1,
        num_experts=2,
        expert_hidden=4,
        tasks=[TaskSpec(name="a", kind="classification", labels=["x", "y", "z"], decoder_hidden=4)],
        routes=RouteSpace(widths=(0.5, 1.0), experts=(1, 2), decoder_widths=(0.5, 1.0)),
    )


def test_hand_count_full_route():
    cfg = tiny_config()
    # stem: 8x8 -> conv 1->2 s2 (4x4 out) -> conv 2->8 s2 (2x2 out = 4 tokens), 3x3 kernels
    stem = 4 * 4 * 2 * 1 * 9 + 2 * 2 * 8 * 2 * 9
    # block, N=4 tokens, D=8, 2 heads of 4: qkv 4*8*24, scores+values 2*4*4*8, proj 4*8*8, mlp 2*4*8*16
    block = 4 * 8 * 24 + 2 * 4 * 4 * 8 + 4 * 8 * 8 + 2 * 4 * 8 * 16
    assert trunk_flops(cfg, 1.0) == 2 * (stem + block)
    # task zone block with k=2 experts of 4 neurons; decoder 8->4->3
    zone = 4 * 8 * 24 + 2 * 4 * 4 * 8 + 4 * 8 * 8 + 2 * 4 * 8 * 8
    assert task_flops(cfg, "a", Route(1.0, 2, 1.0)) == 2 * (zone + 8 * 4 + 4 * 3)
    assert full_flops(cfg, ["a"]) == 2 * (stem + block + zone + 8 * 4 + 4 * 3)


def test_hand_count_half_route():
    cfg = tiny_config()
    stem = 4 * 4 * 1 * 1 * 9 + 2 * 2 * 8 * 1 * 9  # stem hidden channels halve: 2 -> 1
    block = 4 * 8 * 12 + 2 * 4 * 4 * 4 + 4 * 4 * 8 + 2 * 4 * 8 * 8  # one head, 8 neurons
    zone = 4 * 8 * 12 + 2 * 4 * 4 * 4 + 4 * 4 * 8 + 2 * 4 * 8 * 4  # one head, one expert
    dec = 8 * 2 + 2 * 3
    assert request_flops(cfg, 0.5, {"a": Route(0.5, 1, 0.5)}) == 2 * (stem + block + zone + dec)
