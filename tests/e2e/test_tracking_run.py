"""End to end: a real simulation run with tracking on, read back through MLflow's API."""

import pytest
from mlflow import MlflowClient

from fedprivacy.simulations.cli import main

pytestmark = pytest.mark.e2e


def test_a_real_run_is_logged_per_round_and_per_client(tmp_path):
    # Execute: the smallest run (2 clients, 1 round of 3 steps), tracked in its folder
    out = tmp_path / "run"
    code = main(["run", "rounds=1", "train.steps=3", "simulation.num_clients=2",
                 "data.train_per_client=8", "data.val_per_client=8", "tracking.backend=mlflow",
                 "tracking.experiment=e2e", "--out", str(out), "--no-progress"])
    # Assert: what the ServerApp recorded is in MLflow, round by round, client by client
    assert code == 0
    client = MlflowClient(f"sqlite:///{out}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    history = client.get_metric_history(run.info.run_id, "server.eval_loss")
    assert [m.step for m in history] == [0, 1]
    for c in ("0", "1"):
        assert [m.step for m in client.get_metric_history(
            run.info.run_id, f"clients.{c}.train.train_loss")] == [1]
    assert run.data.params["rounds"] == "1" and run.data.params["tracking.backend"] == "mlflow"
    assert {"curves.png", "summary.md", "summary.json", "config.yaml", "versions.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)}
