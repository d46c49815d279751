"""End to end: a real Flower simulation (Ray) through `fedprivacy run`'s code path."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
from transformers import AutoModelForCausalLM

from fedprivacy.config import load_config
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e

FAST = ["train.steps=5", "data.train_per_client=16", "data.val_per_client=8",
        "simulation.num_clients=3", "strategy.min_clients=2", "rounds=2"]  # 1 may fail


MARK = f"fedprivacy-e2e-{uuid.uuid4().hex}"
os.environ["FEDPRIVACY_TEST_MARK"] = MARK  # inherited by the SuperLink and all below it


def _flower_processes():
    """Live (not zombie) processes started by this test module's runs."""
    left = []
    for proc in psutil.process_iter(["status"]):
        try:
            if (proc.info["status"] != psutil.STATUS_ZOMBIE
                    and proc.environ().get("FEDPRIVACY_TEST_MARK") == MARK
                    and proc.pid != os.getpid()):
                left.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return left


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, FAST + [f"out_dir={out}", "client.fail_partitions=[2]"])
    run_experiment(cfg, progress=False)
    return out


def test_run_folder_is_complete(run_dir):
    # Assert: every artefact of a run is there
    for name in ("config.yaml", "versions.json", "metrics.jsonl", "summary.json", "summary.md",
                 "curves.png", "flower.log"):
        assert (run_dir / name).is_file(), name
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert {"eval_loss", "eval_ppl"} <= set(rounds[2]["server"])
    trained = {c for c, row in rounds[1]["clients"].items() if "train.train_loss" in row}
    assert trained == {"0", "1"}  # partition 2 fails in training (it still evaluates)
    assert rounds[2]["durations"]["round_s"] > 0


def test_failing_client_is_dropped_and_rounds_go_on(run_dir):
    # Assert: partition 2 raises in every train round; the run still completes both rounds
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rounds[1:]:
        reasons = [d["reason"] for d in r["dropped"] if d["stage"] == "train"]
        assert len(reasons) == 1 and "injected failure on partition 2" in reasons[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["dropped_replies"] == 2


def test_final_model_reloads_with_from_pretrained(run_dir):
    # Execute
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    # Assert
    assert model.config.model_type == "llama"


def test_no_process_is_left_behind(run_dir):
    assert _flower_processes() == []


def test_resume_continues_after_the_last_checkpoint(run_dir):
    # Prepare: the finished 2-round run, now asked for 3 rounds
    cfg = load_config(run_dir / "config.yaml", [f"out_dir={run_dir}", "rounds=3"])
    # Execute
    run_experiment(cfg, progress=False)
    # Assert: round 3 was trained from the round-2 checkpoint, rounds 0..2 not redone
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 3
    assert _flower_processes() == []


def test_killed_run_stops_everything_and_resumes(tmp_path):
    # Prepare: a 3-round run in its own process, as a user starts it
    cmd = [sys.executable, "-m", "fedprivacy.simulations.cli", "run", *FAST, "rounds=3",
           "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.is_file() and '"round": 1' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline, "round 1 never finished"
        time.sleep(1)
    # Execute: kill it after round 1, then resume from its folder
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    left = _flower_processes()
    cfg = load_config(tmp_path / "config.yaml", [f"out_dir={tmp_path}"])
    run_experiment(cfg, progress=False)
    # Assert: nothing survived the kill; the resumed run did not redo round 1
    assert left == []
    rounds = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    assert rounds[:2] == [0, 1] and rounds[-1] == 3 and rounds.count(1) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 3


def test_every_drop_names_the_partition(run_dir):
    # Assert: partition 2 fails from its first reply on; its drops still name the partition
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dropped = [d for r in rounds for d in r.get("dropped", [])]
    assert dropped and {d["client"] for d in dropped} == {"partition 2"}


def _rounds(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_evaluating_inside_the_train_message_shifts_the_client_evaluation_by_one_round(
        run_dir, tmp_path):
    # Prepare: the module's run again, evaluating in the train messages
    cfg = load_config(None, FAST + [f"out_dir={tmp_path}", "client.fail_partitions=[2]",
                                    "strategy.evaluate_with_train=true"])
    # Execute
    run_experiment(cfg, progress=False)
    # Assert: the same training; round r's client evaluation is now of round r-1's model,
    # which the separate evaluate message of round r-1 measured
    # (by round number: the resume test may have added rounds to the module's run)
    combined, separate = _rounds(tmp_path), {r["round"]: r for r in _rounds(run_dir)}
    assert combined[2]["server"]["eval_loss"] < combined[0]["server"]["eval_loss"]  # trained
    assert combined[2]["server"]["eval_loss"] == pytest.approx(
        separate[2]["server"]["eval_loss"], rel=1e-6)
    for client in ("0", "1"):
        assert combined[2]["clients"][client]["evaluate.eval_loss"] == pytest.approx(
            separate[1]["clients"][client]["evaluate.eval_loss"], rel=1e-6)
    assert combined[2]["evaluate"]["eval_loss"] > 0
