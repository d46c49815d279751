"""End to end: a round without any valid reply, and bit-identical weights from one seed."""

import hashlib
import json

import pytest
from safetensors.numpy import load_file

from fedprivacy.config import load_config
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e

FAST = ["train.steps=3", "data.train_per_client=16", "data.val_per_client=8",
        "simulation.num_clients=2", "strategy.min_clients=2", "rounds=2"]


def _weights_digest(run_dir):
    tensors = load_file(str(run_dir / "model" / "model.safetensors"))
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode() + tensors[key].tobytes())
    return digest.hexdigest()


def test_rounds_without_a_valid_reply_finish_with_the_last_good_model(tmp_path):
    # Prepare: every client fails in training
    cfg = load_config(None, FAST + [f"out_dir={tmp_path}", "client.fail_partitions=[0,1]"])
    # Execute
    folder = run_experiment(cfg, progress=False)
    # Assert: the run finished, said so, and saved the initial model
    summary = json.loads((folder.path / "summary.json").read_text())
    assert summary["rounds_without_valid_reply"] == [1, 2]
    rounds = [json.loads(line) for line in (folder.path / "metrics.jsonl").read_text().splitlines()]
    assert rounds[2]["server"]["eval_loss"] == pytest.approx(rounds[0]["server"]["eval_loss"])
    assert (folder.path / "model" / "model.safetensors").is_file()


def test_the_same_seed_gives_bit_identical_weights(tmp_path):
    # Prepare
    runs = [tmp_path / "a", tmp_path / "b"]
    # Execute
    for out in runs:
        run_experiment(load_config(None, FAST + [f"out_dir={out}"]), progress=False)
    # Assert
    assert _weights_digest(runs[0]) == _weights_digest(runs[1])


def test_one_straggler_costs_one_timeout(tmp_path):
    # Prepare: one simulation worker; partition 1 straggles in round 2 (20 steps x 9 s = 180 s
    # of work against a 60 s round). Without a deadline it would hold the only worker through
    # round 2's evaluation and round 3's training, and every client would miss those.
    timeout = 60
    cfg = load_config(None, FAST + [
        f"out_dir={tmp_path}", "rounds=3", "simulation.ray_cpus=1", "train.steps=20",
        f"strategy.round_timeout={timeout}", "client.slow_partitions=[1]", "client.slow_rounds=[2]",
        "client.slow_step_seconds=9"])
    # Execute
    folder = run_experiment(cfg, progress=False)
    # Assert: round 2 drops the straggler's train reply for its timeout (the other client may
    # wait behind it on the one worker); round 2's evaluation and round 3 hear from both
    rounds = [json.loads(line) for line in (folder.path / "metrics.jsonl").read_text().splitlines()]
    late = [d for d in rounds[2]["dropped"] if d["stage"] == "train"]
    assert "partition 1" in [d["client"] for d in late]
    assert all("timeout" in d["reason"] for d in late)
    assert {c for c, row in rounds[2]["clients"].items() if "evaluate.eval_loss" in row} == {"0", "1"}
    assert {c for c, row in rounds[3]["clients"].items() if "train.train_loss" in row} == {"0", "1"}
    assert rounds[3]["dropped"] == []
