"""The run watchdog: when its runner is SIGKILLed, every process carrying the run's token dies,
the private FLWR_HOME goes and the run folder's lock is released only after that."""

import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pytest

from fedprivacy.report import RunFolder, RunFolderLocked

pytestmark = pytest.mark.unit

RUNNER = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    from fedprivacy.report import RunFolder
    from fedprivacy.simulations.watchdog import RUN_TOKEN, start_watchdog
    folder, home, token = RunFolder(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    with folder.lock() as fd:
        start_watchdog(token, home, fd)
        # a process of the run that left the runner's tree, as Ray's daemons do
        orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                  env={**os.environ, RUN_TOKEN: token}, start_new_session=True)
        print(orphan.pid, flush=True)
        time.sleep(120)
""")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_killed_runner_takes_its_processes_home_and_lock_with_it(tmp_path):
    # Prepare: a runner holding the folder's lock, its watchdog and a tagged orphan-to-be
    folder, home = tmp_path / "run", tmp_path / "flwr-home"
    home.mkdir()
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(folder), str(home),
                               uuid.uuid4().hex], stdout=subprocess.PIPE, text=True)
    orphan = int(runner.stdout.readline())
    with pytest.raises(RunFolderLocked):
        RunFolder(folder).check_unlocked()
    # Execute
    runner.kill()
    runner.wait()
    deadline = time.time() + 30
    while (not _gone(orphan) or home.exists()) and time.time() < deadline:
        time.sleep(0.2)
    # Assert
    assert _gone(orphan) and not home.exists()
    RunFolder(folder).check_unlocked()  # free again: does not raise
