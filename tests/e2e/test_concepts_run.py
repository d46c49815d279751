"""End to end: a Flower simulation on the emotion world with
``alignment: [ircan, contrans, steering]``, writing the aligned model (IRCAN's edit in the
weights, the two steering vectors beside them) and each stage's summary."""

import json

import pytest
import torch

from fedprivacy import concepts
from fedprivacy.config import load_config
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e

FAST = ["data.source=concepts", "data.partition=iid", "train.steps=8",
        "data.train_per_client=48", "data.val_per_client=8", "simulation.num_clients=2",
        "strategy.min_clients=2", "rounds=2", "alignment=[ircan,contrans,steering]",
        "alignment.threads=1", "model.hidden_size=64", "model.num_layers=2",
        "alignment.ircan.data=facts", "alignment.ircan.items=12", "alignment.ircan.steps=4",
        "alignment.ircan.h_grid=[2]", "alignment.ircan.beta_grid=[2]",
        "alignment.ircan.random_draws=1", "alignment.ircan.max_new_tokens=2",
        "alignment.ircan.apply_if_worse=true",
        "alignment.contrans.source_steps=20", "alignment.contrans.source_records=200",
        "alignment.contrans.alpha_grid=[0.2]", "alignment.contrans.random_draws=1",
        "alignment.contrans.neutral_texts=60",
        "alignment.contrans.map_texts=corpus", "alignment.contrans.apply_if_worse=true",
        "alignment.steering.alpha_grid=[0.2]", "alignment.steering.apply_if_worse=true"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("concepts-run")
    run_experiment(load_config(None, FAST + [f"out_dir={out}"]), progress=False)
    return out


def test_aligned_model_carries_all_three_stages(run_dir):
    # Execute: one load call re-attaches the steering
    aligned = concepts.from_pretrained(run_dir / "aligned")

    # Assert
    stages = [a["stage"] for a in aligned.config.fedprivacy_alignment]
    assert stages == ["ircan", "contrans", "steering"]
    names = [a.name for a in concepts.steering_of(aligned)]
    assert names == ["contrans:joy", "steering:joy:l0"]
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        steered = aligned(input_ids=ids).logits
        concepts.clear_steering(aligned)
        plain = aligned(input_ids=ids).logits
    assert not torch.allclose(steered, plain)


def test_stage_summaries_and_plots(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())["alignment"]
    assert set(summary) == {"ircan", "contrans", "steering"}
    assert set(summary["contrans"]["before"]) == {"rate", "token_rate", "perplexity"}
    assert summary["steering"]["chosen"]["dominant"] == "l0"
    folder = run_dir / "alignment"
    for name in ("contrans/table.md", "contrans/alpha_curve.png", "steering/table.md",
                 "steering/recognition.png", "steering/cosine.png", "steering/transfer.png",
                 "steering/alpha_curve.png"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "steering" / "report.json").read_text())
    assert len(report["delta"]) == 4 and all(abs(report["delta"][i][i]) < 1e-9
                                             for i in range(4))
    contrans = json.loads((folder / "contrans" / "report.json").read_text())
    assert contrans["map"]["source_dim"] == 64 and contrans["map"]["target_dim"] == 64
    assert contrans["map"]["texts"] == "corpus" and contrans["map"]["states"] > 60
    assert {"base", "contrans", "self_align", "random"} <= set(contrans["table"])
