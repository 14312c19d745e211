import pytest
import torch

from models.image.config import mnist_scenes_config
from models.image.evaluate import build_route_tables
from models.image.flops import all_routes
from models.image.model import TaskRoutedModel
from models.image.train import RECIPES


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained small model with route tables made up from FLOPs (cheap)."""
    torch.manual_seed(0)
    model = TaskRoutedModel(mnist_scenes_config(**RECIPES["mnist-scenes-tiny"].model)).eval()
    routes = all_routes(model.cfg)
    scores = {t: {r: i / len(routes) for i, r in enumerate(routes)} for t in model.cfg.task_names}
    return model, build_route_tables(model, scores)
