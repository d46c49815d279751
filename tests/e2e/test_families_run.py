"""End to end: the FewFedWeight family testbed as a user runs it: pretraining on the tasks'
unlabelled text, then FewFedWeight from the saved model."""

import json

import pytest

from fedprivacy.config import load_config
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e
TASKS = "data.tasks=[review_polarity,sighting_kind]"


def test_pretrain_on_task_text_then_fewfedweight_from_the_saved_model(tmp_path):
    # Prepare
    pretrain = load_config(None, [
        "data.source=task_text", TASKS, "data.train_per_client=64", "data.val_per_client=8",
        "data.test_per_client=8", "train.steps=10", "rounds=1", "simulation.num_clients=2",
        "strategy.min_clients=2", f"out_dir={tmp_path / 'pretrain'}"])
    # Execute
    base = run_experiment(pretrain, progress=False)
    cfg = load_config(None, [
        "model.preset=", f"model.name_or_path={base.model_dir}", TASKS, "data.partition=by_task",
        "data.train_per_client=8", "data.val_per_client=8", "data.test_per_client=8",
        "train.steps=3", "rounds=2", "simulation.num_clients=2", "strategy.min_clients=2",
        "strategy.name=fewfedweight", "strategy.fewfedweight.pseudo_count=4",
        "evaluation.client_model_scores=true", f"out_dir={tmp_path / 'families'}"])
    folder = run_experiment(cfg, progress=False)
    # Assert: the pretraining learnt the text (perplexity on the server's own task text at least
    # halved); the family run reports per-task scores of both tasks, and round 2 (not round 1,
    # whose global model is the start) carried pseudo data to every client
    start, end = (r["server"]["eval_ppl"] for r in _rounds(base.path)[::len(_rounds(base.path)) - 1])
    assert end < 0.5 * start
    summary = folder.summary()
    assert set(summary["tasks"]) == {"review_polarity", "sighting_kind"}
    assert all(0 <= v <= 1 for v in summary["tasks"].values())
    pseudo = [[c["train.sft.pseudo_samples"] for c in r["clients"].values()]
              for r in _rounds(folder.path)[1:]]
    assert pseudo[0] == [0, 0] and all(n > 0 for n in pseudo[1])


def _rounds(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
