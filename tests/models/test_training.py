"""A short training run on a small model learns every task; the shipped model meets its targets."""

import json

import pytest

from models import checkpoint
from models.data import make_scenes
from models.evaluate import evaluate
from models.routes import Route
from models.train import TEST_SEED, train

# chance levels: majority class (count 1/3, sum ~0.07), an all-absent presence vector is never exact,
# segment mIoU of all-background is 1/11 of the present classes
CHANCE = {"count": 0.36, "presence": 0.02, "sum": 0.08, "segment": 0.1}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    metrics = train("mnist-scenes-tiny", out)
    return out, metrics


def test_short_run_beats_chance_on_every_task(tiny_run):
    _, metrics = tiny_run
    for task, chance in CHANCE.items():
        assert metrics[task]["max"]["score"] > 2 * chance, (task, metrics[task])


def test_short_run_writes_checkpoint_log_and_card(tiny_run):
    out, _ = tiny_run
    model, tables = checkpoint.load(out)
    for rows in tables.values():
        fractions = [r["flops_fraction"] for r in rows]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] <= 0.25
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {row["phase"] for row in log} >= {"full", "reorder", "sandwich", "done"}
    assert "Measured wall time" in (out / "card.md").read_text()


# full-route targets of the shipped checkpoint (issue 2), on a sample of test scenes
TARGETS = {"count": 0.99, "presence": 0.90, "sum": 0.85, "segment": 0.75}


def test_bundled_checkpoint_meets_full_route_targets():
    model, tables = checkpoint.load("mnist-scenes")
    scenes = make_scenes(2000, "test", seed=TEST_SEED)  # the card's test scenes
    kinds = {t.name: (t.kind, t.num_classes) for t in model.cfg.tasks}
    route = Route.parse(tables["count"][-1]["id"])
    assert route == Route(1.0, 4, 1.0)
    scores = evaluate(model.extract(route), scenes, kinds)
    for task, target in TARGETS.items():
        assert scores[task] >= target, (task, scores[task])
