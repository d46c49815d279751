"""A run and a sweep logged to MLflow and read back through MLflow's API; a tracking failure
keeps the run. The simulation is replaced by what a finished run leaves in its folder."""

import csv
import logging
import time
from dataclasses import replace

import pytest
from mlflow import MlflowClient

from fedprivacy.config import ExperimentConfig, flatten, load_config
from fedprivacy.report import RunFolder, summarize
from fedprivacy.simulations import runner
from fedprivacy.simulations.cli import main

pytestmark = pytest.mark.integration
SMALL = ["model.hidden_size=32", "model.num_layers=2", "simulation.num_clients=2",
         "data.source=pii", "data.pii_records=10", "data.canary.repeats=1", "rounds=2"]
RUN_FILES = {"config.yaml", "versions.json", "metrics.jsonl", "summary.json", "summary.md",
             "curves.png"}


def write_run(cfg: ExperimentConfig) -> RunFolder:
    """What the ServerApp leaves: the config, one record per round (round 0: the initial
    model), the summary and its plot."""
    folder = RunFolder(cfg.out_dir)
    folder.write_config(cfg)
    started = time.time()
    for rnd in range(cfg.rounds + 1):
        record = {"round": rnd, "time": started + rnd, "server": {"eval_loss": 5.0 - rnd},
                  "dropped": []}
        if rnd:
            record["train"] = {"train_loss": 4.0 - rnd}
            record["clients"] = {str(c): {"train.train_loss": 4.0 - rnd + c,
                                          "evaluate.eval_loss": 4.5 - rnd,
                                          "train.dp_sgd.epsilon": rnd + c / 10,
                                          "train.dp_sgd.delta": 1e-5}
                                 for c in range(cfg.simulation.num_clients)}
        folder.append_round(record)
    folder.write_summary(summarize(cfg, folder.rounds(), started))
    return folder


@pytest.fixture
def simulation(monkeypatch):
    """`fedprivacy run` with the preflight, the run folder and tracking real; no Flower."""
    def submit(app_dir, cfg: ExperimentConfig, *args, **kwargs) -> int:
        write_run(cfg)
        return 0

    monkeypatch.setattr(runner, "submit", submit)


def _store(folder) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")


def _runs(client: MlflowClient, experiment: str):
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_a_run_is_logged_and_read_back(tmp_path, simulation):
    # Execute
    out = tmp_path / "run"
    code = main(["run", *SMALL, "tracking.backend=mlflow", "--out", str(out), "--no-progress"])
    # Assert: the config as params, one point per round, the folder's files as artifacts
    assert code == 0
    client = _store(out)
    [run] = _runs(client, "quickstart")  # the default experiment: the config's name
    cfg = load_config(out / "config.yaml")
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {k: str(v) for k, v in flatten(cfg).items()}
    history = client.get_metric_history(run.info.run_id, "server.eval_loss")
    assert [(m.step, m.value) for m in history] == [(0, 5.0), (1, 4.0), (2, 3.0)]
    epsilon = client.get_metric_history(run.info.run_id, "clients.1.train.dp_sgd.epsilon")
    assert [(m.step, m.value) for m in epsilon] == [(1, 1.1), (2, 2.1)]
    ledger = client.get_metric_history(run.info.run_id, "privacy.epsilon")  # max over clients
    assert [(m.step, m.value) for m in ledger] == [(1, 1.1), (2, 2.1)]
    assert run.data.metrics["final.eval_loss"] == 3.0  # the summary, at the last round
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == RUN_FILES


def _sweep(tmp_path, monkeypatch, tracking: str):
    """A tracked three-run sweep whose third run crashes after its first round."""
    def run_experiment(cfg: ExperimentConfig, progress: bool = True, track: bool = True):
        if cfg.train.lr == 0.03:
            (write_run(replace(cfg, rounds=1)).path / "summary.json").unlink()
            raise OSError(28, "No space left on device")
        return write_run(cfg)

    monkeypatch.setattr(runner, "run_experiment", run_experiment)
    (tmp_path / "base.yaml").write_text(f"name: tiny\nrounds: 2\ntracking: {tracking}\n")
    runs = "".join(f"  - {{name: {v}, overrides: [train.lr={lr}]}}\n"
                   for v, lr in (("a", 0.01), ("b", 0.02), ("c", 0.03)))
    (tmp_path / "sweep.yaml").write_text(f"base: base.yaml\nname: t\nruns:\n{runs}"
                                         "metrics: [final.eval_loss]\n")
    return main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out"),
                 "--no-progress"])


def test_a_sweep_is_a_parent_run_with_its_runs_nested(tmp_path, monkeypatch):
    # Execute
    code = _sweep(tmp_path, monkeypatch, "{backend: mlflow}")
    # Assert: one parent (the sweep's results), its runs holding its id, the crash FAILED
    out = tmp_path / "out"
    assert code == 1
    client = _store(out)
    runs = {r.info.run_name: r for r in _runs(client, "t")}  # the sweep's name
    assert set(runs) == {"out", "a-seed0", "b-seed0", "c-seed0"}
    parent = runs["out"]
    assert parent.info.status == "FAILED" and parent.data.metrics["failed_runs"] == 1
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "results.csv", "results.md", "comparison.png"}
    for name, lr in (("a-seed0", "0.01"), ("b-seed0", "0.02"), ("c-seed0", "0.03")):
        child = runs[name]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["train.lr"] == lr
        assert child.data.tags["fedprivacy.variant"] == name[0]
    assert len(client.get_metric_history(runs["a-seed0"].info.run_id, "train.train_loss")) == 2
    assert runs["c-seed0"].info.status == "FAILED"
    assert "No space left" in runs["c-seed0"].data.tags["fedprivacy.error"]

    # Execute: logged again after the fact, it replaces the sweep's runs
    assert main(["track", str(out)]) == 0
    # Assert
    again = {r.info.run_name: r for r in _runs(client, "t")}
    assert set(again) == set(runs) and again["out"].info.run_id != parent
    assert again["a-seed0"].data.tags["mlflow.parentRunId"] == again["out"].info.run_id


def test_a_sweep_whose_tracking_fails_goes_on(tmp_path, monkeypatch, caplog):
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedprivacy.tracking"):
        code = _sweep(tmp_path, monkeypatch, "{backend: mlflow, uri: 'nosuch://store'}")
    # Assert: every run ran and is in the results; one warning names the setting
    assert code == 1  # the crashed run, as without tracking
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "tracking.uri='nosuch://store'" in warning


def test_a_tracking_failure_keeps_the_run_and_its_exit_status(tmp_path, simulation, caplog,
                                                              capsys):
    # Execute: a URI no MLflow store answers
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="fedprivacy.tracking"):
        code = main(["run", *SMALL, "tracking.backend=mlflow", "tracking.uri=nosuch://store",
                     "--out", str(out), "--no-progress"])
    # Assert: a warning naming the setting; the run is whole and can be logged later
    assert code == 0 and (out / "summary.json").is_file()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "tracking.uri='nosuch://store'" in warning and f"fedprivacy track {out}" in warning
    assert main(["track", str(out), "--uri", "nosuch://store"]) == 1
    assert "error: tracking.uri='nosuch://store'" in capsys.readouterr().out
    store = f"sqlite:///{out}/mlruns/mlflow.db"
    assert main(["track", str(out), "--uri", store, "--experiment", "later"]) == 0
    [run] = _runs(_store(out), "later")
    assert run.info.status == "FINISHED"
