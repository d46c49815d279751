"""End to end: `fedprivacy sweep` runs every run of a sweep file and writes the comparison."""

import csv

import pytest

from fedprivacy.simulations.cli import main

pytestmark = pytest.mark.e2e


def test_sweep_command_runs_all_runs_and_compares(tmp_path):
    # Prepare: two variants of one tiny base config, one seed
    (tmp_path / "base.yaml").write_text(
        "name: tiny\nrounds: 1\ntrain: {steps: 3}\nsimulation: {num_clients: 2}\n"
        "data: {train_per_client: 8, val_per_client: 8}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: base.yaml\nname: t\nruns:\n  - {name: fedavg, overrides: []}\n"
                     "  - {name: lr-low, overrides: [train.lr=0.0001]}\n"
                     "metrics: [final.eval_loss]\n")
    out = tmp_path / "out"
    # Execute
    code = main(["sweep", str(sweep), "--out", str(out), "--no-progress"])
    # Assert
    assert code == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["variant"] for r in rows] == ["fedavg", "lr-low"]
    assert all(float(r["final.eval_loss"]) > 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| fedavg |" in table and "| lr-low |" in table
    assert (out / "comparison.png").stat().st_size > 0
