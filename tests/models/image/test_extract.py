"""extract() runs exactly the route's configuration, with fewer weights and FLOPs."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models.image.config import mnist_scenes_config
from models.image.flops import all_routes, full_route, request_flops
from models.image.model import TaskRoutedModel
from models.routes import Route

ROUTES = [
    Route(1.0, 4, 1.0),
    Route(0.25, 1, 0.25),
    Route(0.5, 2, 0.5),
    Route(0.75, 1, 1.0),
    Route(0.25, 4, 0.5),
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TaskRoutedModel(mnist_scenes_config()).eval()
    # make importance order non-trivial, as after training
    m.reorder_by_importance()
    return m


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_extract_matches_full_model_at_route(model, route):
    x = torch.rand(5, 1, 56, 56)
    ref = model.predict(x, model.cfg.task_names, route)
    sub = model.extract(route)(x)
    for task in model.cfg.task_names:
        torch.testing.assert_close(sub[task], ref[task], atol=1e-5, rtol=0)


def test_batched_equals_unbatched(model):
    x = torch.rand(6, 1, 56, 56)
    sub = model.extract(Route(0.5, 2, 0.5))
    batched = sub(x)
    for i in range(len(x)):
        single = sub(x[i : i + 1])
        for task in model.cfg.task_names:
            torch.testing.assert_close(single[task][0], batched[task][i], atol=1e-5, rtol=0)


def test_smaller_route_has_fewer_params_and_flops(model):
    cfg = model.cfg
    big, small = full_route(cfg), all_routes(cfg)[0]
    for task in cfg.task_names:
        p_big = sum(p.numel() for p in model.extract({task: big}).parameters())
        p_small = sum(p.numel() for p in model.extract({task: small}).parameters())
        assert p_small < 0.35 * p_big
        assert request_flops(cfg, small.width, {task: small}) <= 0.25 * request_flops(cfg, 1.0, {task: big})


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_analytic_flops_match_torch_flop_counter(model, route):
    """The analytic counter agrees with what torch counts the extracted module running."""
    cfg = model.cfg
    for task in ("count", "segment"):
        sub = model.extract({task: route})
        # the math kernel of scaled_dot_product_attention runs as matmuls the counter sees
        # (it has no formula for the fused CPU kernel)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            sub(torch.rand(1, 1, 56, 56))
        assert counter.get_total_flops() == request_flops(cfg, route.width, {task: route})


def test_multi_task_runs_trunk_once(model):
    routes = {"count": Route(0.5, 1, 0.25), "segment": Route(0.5, 2, 1.0)}
    sub = model.extract(routes)
    x = torch.rand(3, 1, 56, 56)
    both = sub(x)
    for task, route in routes.items():
        alone = model.extract({task: route})(x)[task]
        torch.testing.assert_close(both[task], alone, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="share the trunk width"):
        model.extract({"count": Route(0.5, 1, 0.25), "sum": Route(1.0, 1, 0.25)})


def test_experts_are_a_prefix_of_the_gate_ranking(model):
    for task in model.cfg.task_names:
        one, four = model.experts(task, 1), model.experts(task, 4)
        for a, b in zip(one, four):
            assert a == b[:1] and len(set(b)) == 4
