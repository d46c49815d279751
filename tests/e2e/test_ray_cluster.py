"""End to end: a simulation attaches to an existing Ray cluster (`simulation.ray_address`)."""

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray._raylet import GcsClient

from fedprivacy.config import load_config
from fedprivacy.simulations.runner import free_port, run_experiment
from fedprivacy.simulations.watchdog import RUN_TOKEN, kill_tagged

pytestmark = pytest.mark.e2e

TINY = ["rounds=1", "train.steps=3", "simulation.num_clients=2", "strategy.min_clients=2",
        "data.train_per_client=8", "data.val_per_client=8"]


def _jobs(address: str) -> list[str]:
    """The entrypoints of every driver (job) the cluster has seen."""
    return [job.entrypoint for job in GcsClient(address=address).get_all_job_info().values()]


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A `ray start --head` cluster on 127.0.0.1 with 2 CPUs; yields its address.

    Its processes carry a token of their own and are stopped by it afterwards (`ray stop`
    would stop every Ray on the machine); its temp dir is private, so no other Ray finds it."""
    token, port = uuid.uuid4().hex, free_port()
    temp = Path(tempfile.mkdtemp(prefix="fp-ray-"))  # short: Ray's socket paths must fit
    ray = str(Path(sys.executable).parent / "ray")
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2",
                        "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                        f"--temp-dir={temp}"], env={**os.environ, RUN_TOKEN: token},
                       check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        kill_tagged(token)
        shutil.rmtree(temp, ignore_errors=True)


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
