"""End to end: FewFedWeight in a real Flower simulation."""

import json

import pytest

from fedprivacy.config import load_config
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e

SMALL = ["train.steps=4", "data.train_per_client=16", "data.val_per_client=8", "rounds=2",
         "simulation.num_clients=3", "strategy.min_clients=3", "data.tasks=[sentiment,parity,topic]",
         "strategy.fewfedweight.pseudo_count=8", "strategy.fewfedweight.pseudo_max_new_tokens=6",
         "evaluation.client_model_scores=true"]


def _rounds(folder):
    return [json.loads(line) for line in (folder.path / "metrics.jsonl").read_text().splitlines()]


def test_fewfedweight_sends_pseudo_data_and_weighs_clients(tmp_path):
    # Prepare
    cfg = load_config(None, SMALL + ["strategy.name=fewfedweight", f"out_dir={tmp_path}"])
    # Execute
    folder = run_experiment(cfg, progress=False)
    # Assert: from round 2 on (round 1's global model is the random init) every client
    # trained on weighted pseudo samples; weights per client recorded every round
    rounds = _rounds(folder)
    for record in rounds[1:]:
        info = record["strategy"]
        with_pseudo = record["round"] >= cfg.strategy.fewfedweight.pseudo_start_round
        assert info["pseudo_tasks"] == (3 if with_pseudo else 0)
        weights = info["client_weights"]
        assert set(weights) == {"0", "1", "2"} and sum(weights.values()) == pytest.approx(1.0)
        for row in record["clients"].values():
            assert (row["train.sft.pseudo_samples"] > 0) == with_pseudo
            assert 0 <= row["train.val_score"] <= 1
    assert rounds[-1]["strategy"]["pseudo_kept_mean"] > 0
    summary = folder.summary()
    assert set(summary["tasks"]) == {"sentiment", "parity", "topic"}
