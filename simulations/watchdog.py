"""Every process of a run dies with its runner, even under ``kill -9``.

The runner tags each process it starts (and, through inheritance, each one those start: the
SuperLink, SuperExec, the simulation, Ray's daemons and actors) with ``FEDPRIVACY_RUN_TOKEN``.
`start_watchdog` starts this module as a small process of its own session; it polls whether
its parent, the runner, is still there, and when the runner is gone it stops every process that
carries the token, removes the run's private ``FLWR_HOME`` and exits. It holds a descriptor of
the run folder's lock until the processes are gone, so no second run can take the folder while
the orphans still write into it. On the normal path the runner cleans up itself and then stops
the watchdog.

Run as ``python -m fedprivacy.simulations.watchdog --parent PID --token T --home DIR``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

RUN_TOKEN = "FEDPRIVACY_RUN_TOKEN"


def tagged(token: str) -> list[psutil.Process]:
    """Live processes (not zombies) whose environment carries this run's token, except this
    one."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if (p.pid != os.getpid() and p.info["status"] != psutil.STATUS_ZOMBIE
                    and p.environ().get(RUN_TOKEN) == token):
                found.append(p)
        except psutil.Error:
            continue
    return found


def stop(processes: list[psutil.Process], grace: float) -> None:
    """SIGTERM every process, then SIGKILL those still alive after ``grace`` seconds."""
    for p in processes:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def kill_tagged(token: str, grace: float = 10.0, passes: int = 5) -> int:
    """Stop every process that carries ``token`` (again, for ones started meanwhile, up to
    ``passes`` times); return how many were stopped."""
    count = 0
    for _ in range(passes):
        found = tagged(token)
        if not found:
            break
        count += len(found)
        stop(found, grace)
    return count


def start_watchdog(token: str, home: Path, lock_fd: int | None = None,
                   log: int | None = None) -> subprocess.Popen:
    """Start the watchdog of the calling process (the runner) for one run.

    It gets ``lock_fd`` (the run folder's lock) and writes what it does to ``log``. Its own
    environment lacks the token, so the runner's own clean-up leaves it alone."""
    env = {k: v for k, v in os.environ.items() if k != RUN_TOKEN}
    cmd = [sys.executable, "-m", "fedprivacy.simulations.watchdog", "--parent", str(os.getpid()),
           "--token", token, "--home", str(home)]
    if lock_fd is not None:
        cmd += ["--lock-fd", str(lock_fd)]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT if log is not None else None,
                            pass_fds=(lock_fd,) if lock_fd is not None else (),
                            start_new_session=True)


def watch(parent: int, token: str, home: Path, lock_fd: int | None, poll: float = 0.2) -> int:
    """Wait for ``parent`` to go away (this process is re-parented), then clean up after it."""
    while os.getppid() == parent:
        time.sleep(poll)
    count = kill_tagged(token, grace=3.0)
    if lock_fd is not None:
        os.close(lock_fd)  # every process is gone: the folder may be taken again
    shutil.rmtree(home, ignore_errors=True)
    print(f"[fedprivacy watchdog] runner (pid {parent}) is gone: stopped {count} processes of "
          f"its run, removed {home}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--lock-fd", type=int)
    args = p.parse_args(argv)
    return watch(args.parent, args.token, args.home, args.lock_fd)


if __name__ == "__main__":
    sys.exit(main())
