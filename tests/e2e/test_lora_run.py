"""End to end: LoRA adapters (``model.adapter=lora``) in a real Flower simulation."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fedprivacy.config import load_config
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e

FAST = ["train.steps=3", "data.train_per_client=16", "data.val_per_client=8", "rounds=2",
        "simulation.num_clients=2", "strategy.min_clients=2", "model.adapter=lora"]


def _rounds(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_lora_run_sends_adapters_and_saves_the_merged_model(tmp_path):
    # Prepare
    cfg = load_config(None, FAST + [f"out_dir={tmp_path}"])
    # Execute
    folder = run_experiment(cfg, progress=False)
    # Assert: every client sent and received the same adapter-sized arrays every round
    saved = AutoModelForCausalLM.from_pretrained(folder.model_dir)
    full_bytes = sum(p.numel() * p.element_size() for p in saved.state_dict().values())
    for record in _rounds(folder.path)[1:]:
        rows = record["clients"].values()
        assert len(rows) == 2
        sizes = {(r["train.bytes_up"], r["train.bytes_down"], r["evaluate.bytes_down"])
                 for r in rows}
        assert len(sizes) == 1 and 0 < next(iter(sizes))[0] < 0.05 * full_bytes
    assert not any("lora" in k for k in saved.state_dict())
    assert folder.summary()["rounds"] == 2


def test_lora_run_with_dp_and_depn_reports_the_privacy_ledger(tmp_path):
    # Prepare: DP-SGD then DEPN on PII data, with the canaries' exposure measured
    cfg = load_config(None, FAST + [
        f"out_dir={tmp_path}", "client.pipeline=[dp_sgd,depn]", "data.source=pii",
        "data.pii_records=24", "data.canary.count=2", "data.canary.repeats=2",
        "data.canary.digits=4", "evaluation.privacy=true", "client.depn.top_z=5",
        "client.depn.ig_steps=4", "client.depn.max_records=2"])
    # Execute
    folder = run_experiment(cfg, progress=False)
    # Assert: ε, δ, exposure and DEPN's edits in the ledger, as without an adapter; the base's
    # zeroed neurons only accumulate, and the merged model carries the last round's set
    privacy = folder.summary()["privacy"]
    assert {"epsilon", "delta", "exposure_mean", "exposure_per_canary",
            "edited_neurons_mean"} <= set(privacy) and privacy["epsilon"] > 0
    first, last = (set(r["strategy"]["depn_neurons"]) for r in _rounds(folder.path)[1:])
    assert first and first <= last
    saved = AutoModelForCausalLM.from_pretrained(folder.model_dir)
    d_ff = saved.config.intermediate_size
    weight = {layer: saved.model.layers[layer].mlp.down_proj.weight for layer in range(4)}
    assert all(bool(torch.all(weight[i // d_ff][:, i % d_ff] == 0)) for i in last)


@pytest.mark.slow
def test_smollm2_lora_round(tmp_path):
    # Prepare: the real SmolLM2-135M, one round of one step per client
    from fedprivacy.models import smollm2_config

    mc = smollm2_config()
    model = ["model.preset=", f"model.name_or_path={mc.name_or_path}",
             f"model.gguf_file={mc.gguf_file}"]
    cfg = load_config(None, model + [
        "model.adapter=lora", "rounds=1", "train.steps=1", "train.batch_size=2",
        "train.eval_batch_size=4", "data.train_per_client=4", "data.val_per_client=2",
        "data.max_length=48", "server.eval_records=4", "simulation.num_clients=2",
        "strategy.min_clients=2", f"out_dir={tmp_path}"])
    # Execute
    folder = run_experiment(cfg, progress=False)
    # Assert: adapter bytes are <= 2 % of the full model's; the merged model is saved
    saved = AutoModelForCausalLM.from_pretrained(folder.model_dir, dtype=torch.float32)
    full_bytes = sum(p.numel() * p.element_size() for p in saved.parameters())
    record = _rounds(folder.path)[1]
    assert len(record["clients"]) == 2
    for row in record["clients"].values():
        assert 0 < row["train.bytes_up"] <= 0.02 * full_bytes
    assert saved.config.num_hidden_layers == 30
    assert not any("lora" in k for k in saved.state_dict())
