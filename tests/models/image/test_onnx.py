"""Exported routes run in onnxruntime and match torch."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.export import OPSET, path_file, trunk_file
from models.image.export import export_routes
from models.routes import Route


@pytest.mark.parametrize("route", [Route(1.0, 4, 1.0), Route(0.25, 1, 0.25)], ids=lambda r: r.id)
def test_onnx_matches_torch(tmp_path, tiny_model, route):
    model, _ = tiny_model
    tasks = model.cfg.task_names
    export_routes(model, {t: [route] for t in tasks}, tmp_path)
    graph = onnx.load(tmp_path / trunk_file(route))
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= OPSET
    trunk = ort.InferenceSession(str(tmp_path / trunk_file(route)), providers=["CPUExecutionProvider"])
    x = torch.rand(7, 1, 56, 56)  # a batch size the export never saw: the batch axis is dynamic
    reference = model.extract(route)(x)
    tokens = trunk.run(None, {"image": x.numpy()})[0]
    for task in tasks:
        sess = ort.InferenceSession(
            str(tmp_path / path_file(task, route)), providers=["CPUExecutionProvider"]
        )
        feeds = {"tokens": tokens, "image": x.numpy()}  # a path that never reads the image has no such input
        probs = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
        assert probs.shape == tuple(reference[task].shape)
        assert np.abs(probs - reference[task].numpy()).max() <= 1e-4
