"""Fixtures of the end-to-end tests."""

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedprivacy.simulations.runner import free_port
from fedprivacy.simulations.watchdog import RUN_TOKEN, kill_tagged


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
