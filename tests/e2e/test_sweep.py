"""End to end: `fedprivacy sweep` runs every run of a sweep file and writes the comparison."""

import csv
from pathlib import Path

import pytest

from fedprivacy.simulations.cli import main

pytestmark = pytest.mark.e2e


def _two_run_sweep(tmp_path: Path) -> Path:
    """Two variants (default lr, a low lr) of one tiny base config, one seed."""
    (tmp_path / "base.yaml").write_text(
        "name: tiny\nrounds: 1\ntrain: {steps: 3}\nsimulation: {num_clients: 2}\n"
        "data: {train_per_client: 8, val_per_client: 8}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: base.yaml\nname: t\nruns:\n  - {name: fedavg, overrides: []}\n"
                     "  - {name: lr-low, overrides: [train.lr=0.0001]}\n"
                     "metrics: [final.eval_loss]\n")
    return sweep


def test_sweep_command_runs_all_runs_and_compares(tmp_path):
    # Prepare: two variants of one tiny base config, one seed
    sweep = _two_run_sweep(tmp_path)
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


def _computed(row: dict[str, str]) -> dict[str, object]:
    """A results.csv row without its timings and folder, numbers as floats."""
    out: dict[str, object] = {}
    for key, value in row.items():
        if key == "run_dir" or key.endswith("wall_s"):
            continue
        try:
            out[key] = pytest.approx(float(value), rel=1e-6)
        except ValueError:
            out[key] = value
    return out


def test_a_parallel_sweep_gives_the_sequential_results(tmp_path):
    # Prepare: two tiny runs
    sweep = _two_run_sweep(tmp_path)
    # Execute: one after the other, then both at once
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "seq"), "--no-progress"]) == 0
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "par"), "--parallel", "2"]) == 0
    # Assert: the same run folders and the same rows, in the same order, up to timings
    seq, par = (list(csv.DictReader((tmp_path / d / "results.csv").open()))
                for d in ("seq", "par"))
    assert [r["status"] for r in par] == ["finished", "finished"]
    assert [Path(r["run_dir"]).name for r in par] == [Path(r["run_dir"]).name for r in seq]
    assert [_computed(r) for r in par] == [_computed(r) for r in seq]
    assert all((Path(r["run_dir"]) / "model").is_dir() for r in par)
