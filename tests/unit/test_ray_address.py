"""`simulation.ray_address`: refused when malformed or unreachable, naming the key."""

import pytest

from fedprivacy.config import ConfigError, load_config
from fedprivacy.simulations.runner import check_ray_cluster, free_port
from fedprivacy.simulations.sweep import load_sweep, run_sweep, task_cpus

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("address", ["", "auto", "127.0.0.1:6379", "head.example.org:10001"])
def test_a_well_formed_address_is_accepted(address):
    assert load_config(None, [f"simulation.ray_address={address}"]).simulation.ray_address \
        == address


@pytest.mark.parametrize("address", ["local", "127.0.0.1", ":6379", "host:0", "host:99999",
                                     "host:port"])
def test_a_malformed_address_names_the_key(address):
    with pytest.raises(ConfigError, match=r"^simulation.ray_address: must be '' .* 'auto' or "
                                          r"HOST:PORT"):
        load_config(None, [f"simulation.ray_address={address}"])


def test_an_existing_cluster_keeps_its_size():
    with pytest.raises(ConfigError, match=r"^simulation.ray_cpus: must be 0 with "
                                          r"simulation.ray_address set"):
        load_config(None, ["simulation.ray_address=auto", "simulation.ray_cpus=2"])


def test_an_address_where_no_cluster_answers_is_named():
    port = free_port()  # nothing listens there any more
    with pytest.raises(ConfigError, match=rf"^simulation.ray_address: no Ray cluster answers "
                                          rf"at 127.0.0.1:{port}"):
        check_ray_cluster(f"127.0.0.1:{port}")
    check_ray_cluster("")  # a private Ray: nothing to reach


def test_a_sweep_on_an_unreachable_cluster_is_refused_naming_the_flag(tmp_path):
    # Prepare: a sweep file of the default config, and a port no cluster listens on
    (tmp_path / "sweep.yaml").write_text("base: base.yaml\n")
    (tmp_path / "base.yaml").write_text("rounds: 1\n")
    port = free_port()
    # Execute / Assert: refused before any run starts, no run folder made
    with pytest.raises(ConfigError, match=rf"^--ray: no Ray cluster answers at 127.0.0.1:{port}"):
        run_sweep(load_sweep(tmp_path / "sweep.yaml"), tmp_path / "out", False, 0,
                  f"127.0.0.1:{port}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("overrides", "cpus"), [
    ([], 1),  # a private Ray that may take all of the node: one CPU reserved
    (["simulation.ray_cpus=3"], 3),
    (["simulation.ray_address=auto"], 0),  # its clients reserve their own on the cluster
])
def test_a_sweep_task_reserves_what_its_run_takes_from_its_node(overrides, cpus):
    assert task_cpus(load_config(None, overrides)) == cpus
