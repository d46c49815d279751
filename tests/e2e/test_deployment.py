"""End to end: a real deployment on 127.0.0.1 with Flower's own CLIs, as docs/DEPLOYMENT.md
runs it: a SuperLink with TLS and SuperNode authentication, two registered SuperNodes, each
with its own data file, and `fedprivacy submit`."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from fedprivacy.config import load_config
from fedprivacy.simulations.cli import main
from fedprivacy.simulations.credentials import Credentials, make_credentials
from fedprivacy.simulations.runner import free_port, run_experiment
from fedprivacy.simulations.watchdog import RUN_TOKEN, kill_tagged

pytestmark = [pytest.mark.e2e, pytest.mark.deployment]

BIN = Path(sys.executable).parent
RUN = ["rounds=2", "train.steps=3", "simulation.num_clients=2", "strategy.min_clients=2",
       "data.source=files", "data.path=", "data.train_per_client=6", "data.val_per_client=2",
       "data.test_per_client=2", "server.eval_records=8"]


@dataclass
class Deployment:
    address: str
    creds: Credentials
    env: dict[str, str]  # FLWR_HOME with the connection, the processes' token
    files: list[Path]  # node i's own data file
    logs: Path
    nodes: dict[int, subprocess.Popen] = field(default_factory=dict)  # the running SuperNodes

    def supernode(self, i: int, key: Path) -> subprocess.Popen:
        """Start SuperNode ``i`` (partition i - 1 of 2, its own file) with ``key``; its log
        is the process's ``log_path``."""
        config = f'partition-id={i - 1} num-partitions=2 data-path="{self.files[i - 1]}"'
        path = self.logs / f"supernode-{i}-{uuid.uuid4().hex[:6]}.log"
        proc = subprocess.Popen(
            [BIN / "flower-supernode", "--root-certificates", self.creds.ca_cert,
             "--auth-supernode-private-key", key, "--superlink", self.address,
             "--port", str(free_port()), "--node-config", config],
            env=self.env, stdout=path.open("wb"), stderr=subprocess.STDOUT)
        proc.log_path = path
        return proc

    def online(self) -> int:
        out = subprocess.run([BIN / "flwr", "supernode", "list", "--format", "json"],
                             env=self.env, capture_output=True, text=True, timeout=60)
        return sum(n["status"] == "online" for n in json.loads(out.stdout)["nodes"])


def _notes(path: Path, who: str, n: int = 10) -> Path:
    path.write_text("".join(json.dumps({"text": f"{who} wrote note number {i} today"}) + "\n"
                            for i in range(n)))
    return path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    """A TLS SuperLink with SuperNode authentication and two registered, online SuperNodes."""
    root = tmp_path_factory.mktemp("deployment")
    creds = make_credentials(root / "creds", ["127.0.0.1"], nodes=3)
    home = root / "flwr-home"
    home.mkdir()
    port, token = free_port(), uuid.uuid4().hex
    address = f"127.0.0.1:{port}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "{address}"\n'
        f'root-certificates = "{creds.ca_cert}"\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           RUN_TOKEN: token,  # Flower starts flower-superexec by name: this environment's
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    files = [_notes(root / "alice.jsonl", "alice"), _notes(root / "bob.jsonl", "bob", 12)]
    dep = Deployment(address, creds, env, files, root)
    try:
        subprocess.Popen(
            [BIN / "flower-superlink", "--ssl-ca-certfile", creds.ca_cert, "--ssl-certfile",
             creds.server_cert, "--ssl-keyfile", creds.server_key, "--enable-supernode-auth",
             "--host", "127.0.0.1", "--port", str(port),
             "--disable-runtime-dependency-installation"],
            env=env, stdout=(root / "superlink.log").open("wb"), stderr=subprocess.STDOUT)
        _until(lambda: _registers(dep, creds.node_keys[0]), 90, "the SuperLink to answer")
        _registers(dep, creds.node_keys[1])
        for i in (1, 2):
            dep.nodes[i] = dep.supernode(i, creds.node_keys[i - 1])
        _until(lambda: dep.online() == 2, 120, "two SuperNodes online")
        yield dep
    finally:
        kill_tagged(token)


def _registers(dep: Deployment, key: Path) -> bool:
    out = subprocess.run([BIN / "flwr", "supernode", "register", f"{key}.pub"], env=dep.env,
                         capture_output=True, text=True, timeout=60)
    return "registered" in out.stdout


def _until(check, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except (subprocess.SubprocessError, ValueError, KeyError):
            pass
        time.sleep(2)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def test_an_unregistered_supernode_is_refused(deployment):
    # Prepare / Execute: a SuperNode whose key was never registered
    proc = deployment.supernode(2, deployment.creds.node_keys[2])
    # Assert: it exits with an error instead of joining
    assert proc.wait(timeout=180) != 0
    assert deployment.online() == 2


def test_a_deployment_run_gives_the_simulation_of_the_same_config(deployment, tmp_path):
    # Prepare: node-local data (each SuperNode names its own file)
    out = tmp_path / "deployed"
    # Execute: submit to the deployment, then simulate the same config, files by data.node_paths
    code = main(["submit", *RUN, "--superlink", deployment.address, "--root-certificates",
                 str(deployment.creds.ca_cert), "--out", str(out)])
    paths = ",".join(str(f) for f in deployment.files)
    sim = run_experiment(load_config(None, RUN + [f"data.node_paths=[{paths}]",
                                                  f"out_dir={tmp_path / 'simulated'}"]),
                         progress=False, track=False)
    # Assert: the same rounds, losses and per-client examples as the simulation
    assert code == 0
    deployed, simulated = json.loads((out / "summary.json").read_text()), sim.summary()
    assert deployed["rounds"] == simulated["rounds"] == 2
    for key in ("final", "initial"):
        assert deployed[key]["eval_loss"] == pytest.approx(simulated[key]["eval_loss"], rel=1e-4)
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    examples = {c: m["train.num-examples"] for c, m in rounds[-1]["clients"].items()}
    assert examples == {"0": 6.0, "1": 8.0}  # 10 and 12 notes cut 6:2:2 (6, 2, 2 and 8, 2, 2)
    assert "[fedprivacy] run finished" in (out / "server.log").read_text()  # its own log


def test_a_run_whose_serverapp_fails_exits_non_zero(deployment, capsys):
    # Prepare: a run folder the ServerApp cannot create (`flwr run` itself would exit 0)
    # Execute
    code = main(["submit", *RUN, "--superlink", deployment.address, "--root-certificates",
                 str(deployment.creds.ca_cert), "--out", "/proc/fedprivacy-cannot-write"])
    # Assert: non-zero, with Flower's status of the run and the ServerApp's error
    assert code == 1
    said = capsys.readouterr().out
    assert "finished:failed" in said and "fedprivacy-cannot-write" in said


def test_a_supernode_killed_in_round_1_costs_a_bounded_wait_and_rejoins_when_restarted(
        deployment, tmp_path):
    # Prepare: 4 rounds that go on with one node; a short bound on waiting for nodes
    out = tmp_path / "killed"
    timeout = 60
    overrides = [o for o in RUN if not o.startswith(("rounds=", "strategy.min_clients="))]
    overrides += ["rounds=4", "strategy.min_clients=1", "strategy.node_wait=15",
                  f"strategy.round_timeout={timeout}"]
    codes: list[int] = []
    started = time.time()
    submit = threading.Thread(target=lambda: codes.append(main([
        "submit", *overrides, "--superlink", deployment.address, "--root-certificates",
        str(deployment.creds.ca_cert), "--out", str(out)])))
    submit.start()
    # Execute: once SuperNode 2 has its round-1 train message, kill it and all below it;
    # once round 2 has finished without it, start it again with its key and data
    log = deployment.nodes[2].log_path
    seen = log.stat().st_size
    _until(lambda: "Receiving: train message" in log.read_text()[seen:], 300,
           "SuperNode 2's train message")
    node = psutil.Process(deployment.nodes[2].pid)
    for proc in [*node.children(recursive=True), node]:
        proc.kill()
    metrics = out / "metrics.jsonl"
    _until(lambda: len(metrics.read_text().splitlines()) >= 3, 2 * (timeout + 15) + 120,
           "rounds 1 and 2 without SuperNode 2")  # round 0 (the initial model), 1, 2
    deployment.nodes[2] = deployment.supernode(2, deployment.creds.node_keys[1])
    submit.join(timeout=4 * (timeout + 15) + 300)
    elapsed = time.time() - started
    # Assert: the run finished all rounds; rounds 1 and 2 record partition 1 as lost, by name
    # (no reply, or no longer connected); the restarted node is back by the last round
    assert codes == [0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 4
    rounds = [json.loads(line) for line in metrics.read_text().splitlines()]
    for rnd in rounds[1:3]:
        assert {d["client"] for d in rnd["dropped"]} == {"partition 1"}, rnd["dropped"]
        assert set(rnd["clients"]) == {"0"}
    assert set(rounds[-1]["clients"]) == {"0", "1"} and not rounds[-1]["dropped"]
    assert elapsed < 4 * (timeout + 15) + 300
