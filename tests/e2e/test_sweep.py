"""End to end: `fedprivacy sweep` runs every run of a sweep file and writes the comparison."""

import csv
import os
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


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    """The two-run sweep file and the rows of its sequential run (shared by the tests that
    run it otherwise)."""
    tmp = tmp_path_factory.mktemp("sequential")
    sweep = _two_run_sweep(tmp)
    assert main(["sweep", str(sweep), "--out", str(tmp / "seq"), "--no-progress"]) == 0
    return sweep, list(csv.DictReader((tmp / "seq" / "results.csv").open()))


def test_sweep_command_runs_all_runs_and_compares(sequential):
    # Prepare and Execute (the fixture): `fedprivacy sweep` on two variants, one seed
    sweep, rows = sequential
    out = sweep.parent / "seq"
    # Assert
    assert [r["variant"] for r in rows] == ["fedavg", "lr-low"]
    assert all(float(r["final.eval_loss"]) > 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| fedavg |" in table and "| lr-low |" in table
    assert (out / "comparison.png").stat().st_size > 0


def _computed(row: dict[str, str]) -> dict[str, object]:
    """A results.csv row without its timings and folder, numbers as floats."""
    out: dict[str, object] = {}
    for key, value in row.items():
        if key in ("run_dir", "ran_on") or key.endswith("wall_s"):
            continue
        try:
            out[key] = pytest.approx(float(value), rel=1e-6)
        except ValueError:
            out[key] = value
    return out


def _same_as_sequential(rows: list[dict[str, str]], seq: list[dict[str, str]]) -> None:
    """Both runs finished, with the sequential sweep's folder names and rows (up to timings)."""
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert [Path(r["run_dir"]).name for r in rows] == [Path(r["run_dir"]).name for r in seq]
    assert [_computed(r) for r in rows] == [_computed(r) for r in seq]
    assert all((Path(r["run_dir"]) / "model").is_dir() for r in rows)


def test_a_parallel_sweep_gives_the_sequential_results(tmp_path, sequential):
    # Prepare: two tiny runs, and their sequential sweep
    sweep, seq = sequential
    # Execute: both at once
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "par"), "--parallel", "2"]) == 0
    # Assert
    _same_as_sequential(list(csv.DictReader((tmp_path / "par" / "results.csv").open())), seq)


def test_a_sweep_on_a_ray_cluster_runs_its_runs_as_tasks(tmp_path, sequential, ray_cluster):
    # Prepare: two tiny runs, and their sequential sweep
    sweep, seq = sequential
    # Execute: each run a task on the cluster (2 CPUs: both at once)
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "ray"), "--ray", ray_cluster]) == 0
    # Assert: the sequential results, each run by a Ray worker, not by this process
    rows = list(csv.DictReader((tmp_path / "ray" / "results.csv").open()))
    _same_as_sequential(rows, seq)
    workers = {r["ran_on"].rsplit(":", 1)[1] for r in rows}
    assert str(os.getpid()) not in workers and "ran_on" not in seq[0]
