"""End to end: DEPN after the last round, its union guarded by the server's own dev text."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fedprivacy.config import load_config
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e


def test_depn_last_round_with_union_guard_zeroes_exactly_the_kept_union(tmp_path):
    # Prepare: 2 clients on PII text, DEPN only in the last of 2 rounds, a zero server budget
    cfg = load_config(None, [
        "train.steps=5", "data.source=pii", "data.pii_records=24", "data.val_per_client=8",
        "data.canary.count=1", "data.canary.repeats=4", "data.canary.digits=4", "rounds=2",
        "simulation.num_clients=2", "strategy.min_clients=2", "server.eval_records=16",
        "client.pipeline=[sft,depn]", "client.depn.when=last", "client.depn.top_z=20",
        "client.depn.ig_steps=4", "client.depn.max_records=2", "client.depn.utility_budget=-1",
        "client.depn.union_budget=0.0", f"out_dir={tmp_path}"])
    # Execute
    folder = run_experiment(cfg, progress=False)
    # Assert: round 1 edits nothing; round 2's clients propose neurons, the server keeps those
    # whose zeroing leaves its dev perplexity within the zero budget; the saved model zeroes
    # exactly the kept ones
    rounds = [json.loads(line) for line in (folder.path / "metrics.jsonl").read_text().splitlines()]
    first, last = rounds[1]["strategy"], rounds[2]["strategy"]
    assert "depn_neurons" not in first
    assert 0 < last["depn_proposed"] and last["depn_union"] <= last["depn_proposed"]
    assert len(last["depn_neurons"]) == last["depn_union"]
    assert last["depn_dev_ppl_change"] <= 1e-9
    saved = AutoModelForCausalLM.from_pretrained(folder.model_dir)
    d_ff = saved.config.intermediate_size
    zero = {layer * d_ff + i for layer, block in enumerate(saved.model.layers)
            for i in range(d_ff) if bool(torch.all(block.mlp.down_proj.weight[:, i] == 0))}
    assert zero == set(last["depn_neurons"])
