"""End to end: a simulation attaches to an existing Ray cluster (`simulation.ray_address`)."""

import pytest
from ray._raylet import GcsClient

from fedprivacy.config import load_config
from fedprivacy.simulations.runner import run_experiment

pytestmark = pytest.mark.e2e

TINY = ["rounds=1", "train.steps=3", "simulation.num_clients=2", "strategy.min_clients=2",
        "data.train_per_client=8", "data.val_per_client=8"]


def _jobs(address: str) -> list[str]:
    """The entrypoints of every driver (job) the cluster has seen."""
    return [job.entrypoint for job in GcsClient(address=address).get_all_job_info().values()]


def test_a_simulation_runs_on_an_existing_ray_cluster(tmp_path, ray_cluster):
    # Prepare: a tiny run that names the cluster; the cluster has run no driver yet
    cfg = load_config(None, TINY + [f"out_dir={tmp_path}",
                                    f"simulation.ray_address={ray_cluster}"])
    assert _jobs(ray_cluster) == []
    # Execute
    folder = run_experiment(cfg, progress=False)
    # Assert: the run finished, and its simulation was a driver of that cluster
    assert folder.summary()["rounds"] == 1
    assert any("flwr-simulation" in entrypoint for entrypoint in _jobs(ray_cluster))
    assert load_config(tmp_path / "config.yaml").simulation.ray_address == ray_cluster
