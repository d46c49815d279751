"""Experiment tracking settings and what is logged per round; off costs nothing (no mlflow)."""

import importlib.util
import math
import subprocess
import sys

import pytest

from fedprivacy.config import ConfigError, default_config, load_config
from fedprivacy.report import RunFolder
from fedprivacy.simulations.runner import run_experiment
from fedprivacy.simulations.sweep import load_sweep, same_config
from fedprivacy.tracking import round_metrics

pytestmark = pytest.mark.unit


def test_tracking_is_off_by_default_and_a_bad_backend_names_the_key():
    # Execute
    cfg = load_config(None, ["tracking.backend=mlflow", "tracking.uri=http://127.0.0.1:5000",
                             "tracking.experiment=e"])
    # Assert
    assert default_config().tracking.backend == "none"
    assert (cfg.tracking.uri, cfg.tracking.experiment) == ("http://127.0.0.1:5000", "e")
    with pytest.raises(ConfigError, match=r"^tracking.backend: must be one of \['mlflow', "
                                          r"'none'\] \(got 'wandb'\)"):
        load_config(None, ["tracking.backend=wandb"])
    with pytest.raises(ConfigError, match="^tracking.urii"):
        load_config(None, ["tracking.urii=x"])


def test_a_missing_mlflow_fails_before_anything_runs(tmp_path, monkeypatch):
    # Prepare: mlflow looks uninstalled
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    out = tmp_path / "run"
    cfg = load_config(None, ["tracking.backend=mlflow", f"out_dir={out}"])
    # Execute / Assert: the preflight's first check, before a model is built
    with pytest.raises(ConfigError, match="^tracking.backend: mlflow is not installed"):
        run_experiment(cfg, progress=False)
    assert not out.exists()


def test_off_imports_no_mlflow_and_writes_nothing(tmp_path):
    # Prepare: a finished run folder, and the code paths a run and a sweep take
    cfg = load_config(None, [f"out_dir={tmp_path / 'run'}"])
    folder = RunFolder(cfg.out_dir)
    folder.write_config(cfg)
    (folder.path / "summary.json").write_text("{}")
    code = f"""
import sys
from pathlib import Path
from fedprivacy.config import TrackingConfig
from fedprivacy.simulations import cli, runner, sweep
from fedprivacy.tracking import SweepTracking, track_run
root = Path({str(tmp_path)!r})
before = sorted(root.rglob("*"))
assert track_run(root / "run", TrackingConfig(), "x") is None
with SweepTracking(TrackingConfig(), root, "x") as tracker:
    tracker.add({{"run_dir": str(root / "run"), "variant": "v", "seed": 0, "status": "finished"}})
assert "mlflow" not in sys.modules, "mlflow was imported"
assert sorted(root.rglob("*")) == before, "files were written"
"""
    # Execute
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    # Assert
    assert result.returncode == 0, result.stderr


def test_a_round_record_becomes_metrics_per_client_and_the_privacy_ledger():
    # Prepare: a round with two clients (DP-SGD, canary exposure), one dropped reply
    record = {"round": 3, "time": 1.0e9, "server": {"eval_loss": 2.5, "eval_ppl": math.inf},
              "evaluate": {"privacy.exposure_mean": 1.5},
              "clients": {"0": {"train.dp_sgd.epsilon": 2.0, "evaluate.privacy.exposure": [1.0, 2.0]},
                          "1": {"train.dp_sgd.epsilon": 3.0, "train.dp_sgd.delta": 1e-5}},
              "strategy": {"weights": {"task (a)": 0.25}}, "dropped": [{"reason": "nan"}]}
    # Execute
    metrics = round_metrics(record)
    # Assert
    assert metrics["server.eval_loss"] == 2.5 and "server.eval_ppl" not in metrics  # not finite
    assert metrics["clients.0.evaluate.privacy.exposure.1"] == 2.0
    assert metrics["clients.1.train.dp_sgd.epsilon"] == 3.0
    assert metrics["privacy.epsilon"] == 3.0 and metrics["privacy.exposure_mean"] == 1.5
    assert metrics["strategy.weights.task _a_"] == 0.25  # MLflow refuses "(" in a key
    assert metrics["dropped"] == 1.0 and not {"round", "time"} & set(metrics)


def _sweep_file(tmp_path, experiments: list[str]):
    (tmp_path / "base.yaml").write_text("name: tiny\nrounds: 1\ntracking: {backend: mlflow}\n")
    runs = "".join(f"  - {{name: r{i}, overrides: [tracking.experiment={e}]}}\n"
                   for i, e in enumerate(experiments))
    (tmp_path / "sweep.yaml").write_text(f"base: base.yaml\nname: t\nruns:\n{runs}")
    return tmp_path / "sweep.yaml"


def test_a_sweep_has_one_tracking_for_all_its_runs(tmp_path):
    # Execute
    sweep = load_sweep(_sweep_file(tmp_path, ["a", "a"]))
    # Assert
    assert (sweep.tracking.backend, sweep.tracking.experiment) == ("mlflow", "a")
    with pytest.raises(ConfigError, match="tracking: must be the same for every run"):
        load_sweep(_sweep_file(tmp_path, ["a", "b"]))


def test_a_finished_run_is_reused_whatever_its_tracking(tmp_path):
    # Prepare: a run made without tracking
    folder = RunFolder(tmp_path / "run")
    folder.write_config(load_config(None, [f"out_dir={folder.path}"]))
    # Execute / Assert: tracking does not change what a run computes
    assert same_config(folder.path, load_config(None, [f"out_dir={folder.path}",
                                                       "tracking.backend=mlflow"]))
    assert not same_config(folder.path, load_config(None, [f"out_dir={folder.path}",
                                                           "rounds=5"]))
