"""End to end: a killed runner takes its whole simulation with it, the folder resumes with every
round recorded once, and a failing ServerApp's own error reaches the user."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from fedprivacy.config import load_config
from fedprivacy.simulations import runner
from fedprivacy.simulations.cli import main
from fedprivacy.simulations.runner import run_experiment
from fedprivacy.simulations.watchdog import RUN_TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY = ["train.steps=3", "data.train_per_client=8", "data.val_per_client=8",
        "simulation.num_clients=2", "strategy.min_clients=2"]
MARK_KEY = "FEDPRIVACY_TEST_MARK"


def _marked(mark: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose environment carries ``mark``."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get(MARK_KEY) == mark:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _run_env(mark: str) -> tuple[str, str]:
    """The run token and private FLWR_HOME of the live run marked ``mark``."""
    for p in _marked(mark):
        try:
            env = p.environ()
        except psutil.Error:
            continue
        if RUN_TOKEN in env:
            return env[RUN_TOKEN], env["FLWR_HOME"]
    raise AssertionError("no process of the run carries its token")


def _wait_for_round(metrics: Path, rnd: int, proc: subprocess.Popen, limit: float = 600) -> None:
    deadline = time.time() + limit
    while not (metrics.is_file() and f'"round": {rnd},' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline, f"round {rnd} never finished"
        time.sleep(0.5)


def test_kill_9_of_the_runner_stops_everything_and_the_folder_resumes(tmp_path):
    # Prepare: a 3-round run in its own process, as a user starts it
    mark = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "fedprivacy.simulations.cli", "run", *TINY, "rounds=3",
           "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen(cmd, env={**os.environ, MARK_KEY: mark},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_round(tmp_path / "metrics.jsonl", 1, proc)
    token, home = _run_env(mark)
    # Execute: SIGKILL, so no clean-up code of the runner runs
    proc.kill()
    proc.wait()
    deadline = time.time() + 60
    while (_marked(mark) or Path(home).exists()) and time.time() < deadline:
        time.sleep(0.5)
    left = [" ".join(p.cmdline()[:3]) for p in _marked(mark)]
    # Assert: no process of the run (nor its watchdog) is left, nor its FLWR_HOME
    assert left == [] and not Path(home).exists()
    assert not [p for p in psutil.process_iter()
                if p.pid != os.getpid() and _env(p).get(RUN_TOKEN) == token]
    # Execute: resume the folder the killed run left
    run_experiment(load_config(tmp_path / "config.yaml", [f"out_dir={tmp_path}"]),
                   progress=False)
    # Assert: every round recorded exactly once, the run finished
    rounds = [json.loads(line)["round"]
              for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3]
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 3


def _env(p: psutil.Process) -> dict[str, str]:
    try:
        return p.environ()
    except psutil.Error:
        return {}


FAILING_APP = '''
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

app = ServerApp()
client = ClientApp()


@app.main()
def main(grid, context):
    raise RuntimeError("injected server failure on purpose")
'''


def test_a_failing_serverapp_is_quoted_by_the_cli(tmp_path, monkeypatch, capsys):
    # Prepare: the run's app bundle gets a ServerApp that raises at once
    real_write_app = runner.write_app

    def failing_app(app_dir: Path, cfg, components=runner.COMPONENTS) -> None:
        real_write_app(app_dir, cfg, ("failing_app:app", "failing_app:client"))
        (app_dir / "failing_app.py").write_text(FAILING_APP)

    monkeypatch.setattr(runner, "write_app", failing_app)
    # Execute
    code = main(["run", *TINY, "rounds=1", "--out", str(tmp_path), "--no-progress"])
    # Assert: the ServerApp's own error, on one line, not flwr's exit code
    out = capsys.readouterr().out
    assert code == 1
    assert ("error: the ServerApp failed: RuntimeError: injected server failure on purpose"
            in out)
    assert "exit code" not in out and len(out.strip().splitlines()) == 1
