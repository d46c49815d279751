"""Run one experiment as a Ray-backed Flower simulation, on Flower's supported path.

`run_experiment` writes the run folder, generates a minimal Flower app whose
``[tool.flwr.app.config]`` is the resolved, flattened config, starts a private simulation
SuperLink on a free loopback port (its own ``FLWR_HOME``), submits the app with ``flwr run``
and, whatever happens, stops the SuperLink and every process it started. The ServerApp and
ClientApp are the same ones a deployment runs. Ray is a private one per run (its temp dir in
the run's ``FLWR_HOME``, so concurrent runs share no Ray state), or the existing cluster at
``simulation.ray_address``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import psutil

from fedprivacy.config import ConfigError, ExperimentConfig, flatten
from fedprivacy.report import RunFolder
from fedprivacy.simulations.watchdog import RUN_TOKEN, kill_tagged, start_watchdog, stop
from fedprivacy.tracking import track_run

APP_NAME = "fedprivacy-run"
CONNECTION = "fedprivacy-sim"


class RunFailed(RuntimeError):
    """The simulation ended without a summary; the message points at the log."""


def resolve_out_dir(cfg: ExperimentConfig) -> ExperimentConfig:
    """Give the run an absolute folder: ``out_dir`` or ``runs/<name>-<time>``."""
    if cfg.out_dir:
        path = Path(cfg.out_dir).expanduser()
    else:
        path = Path("runs") / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return replace(cfg, out_dir=str(path.resolve()))


def toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


COMPONENTS = ("fedprivacy.strategies.server_app:app", "fedprivacy.clients.client_app:app")


def write_app(app_dir: Path, cfg: ExperimentConfig,
              components: tuple[str, str] = COMPONENTS) -> None:
    """A Flower app bundle: a pyproject.toml naming the (server, client) components and the
    config. The components are imported from the installed packages."""
    app_dir.mkdir(parents=True, exist_ok=True)
    lines = ["[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"',
             "", "[project]", f'name = "{APP_NAME}"', 'version = "1.0.0"',
             "dependencies = []", "", "[tool.flwr.app]", 'publisher = "fedprivacy"', "",
             "[tool.flwr.app.components]", f'serverapp = "{components[0]}"',
             f'clientapp = "{components[1]}"', "", "[tool.flwr.app.config]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in flatten(cfg).items()]
    (app_dir / "pyproject.toml").write_text("\n".join(lines) + "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def console_script(name: str) -> str:
    """A console script of this environment (next to the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _kill_tree(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and every process below it.

    The SuperLink starts SuperExec and the simulation (and it Ray) in sessions of their own,
    so the process group is not enough: the tree is collected first, then signalled.
    """
    try:
        root = psutil.Process(proc.pid)
        stop([root, *root.children(recursive=True)], grace)
    except psutil.NoSuchProcess:
        pass
    proc.wait(timeout=5)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a simulation (or a parallel sweep) runs, SIGTERM unwinds like Ctrl-C, so the
    SuperLink is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def simulation_superlink(log_path: Path, lock_fd: int | None = None, ray_address: str = ""
                         ) -> Iterator[dict[str, str]]:
    """A private simulation SuperLink; yields the environment that ``flwr`` must use.

    The simulation's ``ray.init`` attaches to ``ray_address`` ("auto" or HOST:PORT) or, with
    "", starts a Ray of its own under the private ``FLWR_HOME`` (never a cluster it happens to
    find). A watchdog (`fedprivacy.simulations.watchdog`) stops all of it if this process is
    killed; it holds ``lock_fd`` (the run folder's lock) until then."""
    home = Path(tempfile.mkdtemp(prefix="fedprivacy-flwr-"))
    port = free_port()
    # the SuperLink starts flower-superexec by name: this environment's scripts come first
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    token = uuid.uuid4().hex  # marks every process of this run, even ones Ray re-parents
    env = {**os.environ, "PATH": path, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1",
           RUN_TOKEN: token, "RAY_ADDRESS": ray_address or "local"}
    if not ray_address:
        env["RAY_TMPDIR"] = str(home)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    with log_path.open("ab") as log:
        watchdog = start_watchdog(token, home, lock_fd, log.fileno())
        proc: subprocess.Popen | None = None
        try:
            proc = subprocess.Popen(
                [console_script("flower-superlink"), "--insecure", "--simulation", "--host",
                 "127.0.0.1", "--port", str(port), "--isolation", "subprocess",
                 "--disable-runtime-dependency-installation"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            with sigterm_as_interrupt():
                _wait_healthy(port, proc, log_path)
                yield env
        finally:
            if proc is not None:
                _kill_tree(proc)
            kill_tagged(token)
            shutil.rmtree(home, ignore_errors=True)
            watchdog.terminate()  # everything is stopped: the watchdog has nothing left to do
            watchdog.wait(timeout=10)


def _wait_healthy(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RunFailed(f"the SuperLink exited with code {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RunFailed(f"the SuperLink did not become healthy in {timeout:.0f} s; see {log_path}")


def check_ray_cluster(address: str, timeout: float = 5.0, key: str = "simulation.ray_address"
                      ) -> None:
    """A HOST:PORT Ray address (``key``) answers (fail in seconds, not in Ray's retries);
    "" (a private Ray) and "auto" (Ray finds it) are not checked."""
    if address in ("", "auto"):
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"{key}: no Ray cluster answers at {address} ({err}); "
                          f"start one (ray start --head --port={port}) or fix the address"
                          ) from err


def federation_config(cfg: ExperimentConfig) -> str:
    sim = cfg.simulation
    parts = [f"num-supernodes={sim.num_clients}",
             f"client-resources-num-cpus={sim.cpus_per_client}",
             f"client-resources-num-gpus={sim.gpus_per_client}"]
    if sim.ray_cpus:
        parts.append(f"init-args-num-cpus={sim.ray_cpus}")
    return " ".join(parts)


def submit(app_dir: Path, cfg: ExperimentConfig, log_path: Path,
           on_tick: Callable[[], None] = lambda: None, lock_fd: int | None = None,
           stop: threading.Event | None = None) -> int:
    """Run the app in ``app_dir`` on a private simulation SuperLink; return flwr's exit code.

    ``on_tick`` is called twice a second while the run goes on (progress display); ``lock_fd``
    (the run folder's lock) is held by the run's watchdog too; ``stop``, once set, ends the
    run like Ctrl-C (`KeyboardInterrupt`)."""
    with (simulation_superlink(log_path, lock_fd, cfg.simulation.ray_address) as env,
          log_path.open("ab") as log):
        proc = subprocess.Popen(
            [console_script("flwr"), "run", str(app_dir), CONNECTION, "--stream",
             "--federation-config", federation_config(cfg)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                on_tick()
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                time.sleep(0.5)
            on_tick()
        finally:
            _kill_tree(proc, grace=5.0)
    return proc.returncode


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_TAIL = 2_000_000  # bytes of flower.log searched for the ServerApp's error


def last_error(log_text: str) -> str | None:
    """The last exception in a Flower log: the ``Type: message`` line closing its last
    traceback, else the last ERROR line; None if there is neither."""
    lines = [_ANSI.sub("", line).rstrip() for line in log_text.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].endswith("Traceback (most recent call last):"):
            for line in lines[i + 1:]:
                if line and not line[0].isspace():
                    return line.strip()
    errors = [line.split(":", 1)[1].strip() for line in lines
              if line.startswith("ERROR") and ":" in line]
    return next((e for e in reversed(errors) if e), None)


def failure_message(code: int, log_path: Path) -> str:
    """Why a run ended without a summary: the ServerApp's last error from its log."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(max(0, log_path.stat().st_size - LOG_TAIL))
            error = last_error(fh.read().decode("utf-8", errors="replace"))
    except OSError:
        error = None
    if error:
        return f"the ServerApp failed: {error} (see {log_path})"
    return f"the run ended without a summary (flwr exit code {code}); see {log_path}"


def run_experiment(cfg: ExperimentConfig, progress: bool = True, track: bool = True,
                   stop: threading.Event | None = None) -> RunFolder:
    """Run a simulation of ``cfg``; return its run folder (with ``summary.json``).

    Re-running on a folder with a checkpoint resumes after the last finished round. The folder
    is locked while the run lives (`RunFolder.lock`): a second run on it raises
    `fedprivacy.report.RunFolderLocked` before writing anything. With ``track`` (a sweep
    passes False: it logs its runs itself) the finished run is logged as ``cfg.tracking``
    says (`fedprivacy.tracking`); a tracking failure is a warning, never a failed run.
    ``stop`` (a parallel sweep's interrupt) ends the simulation like Ctrl-C.
    """
    from fedprivacy.simulations.preflight import preflight
    from fedprivacy.simulations.progress import RoundProgress

    cfg = resolve_out_dir(cfg)
    if Path(cfg.out_dir).is_dir():
        RunFolder(cfg.out_dir).check_unlocked()  # refuse at once, before the preflight
    check_ray_cluster(cfg.simulation.ray_address)
    preflight(cfg)
    folder = RunFolder(cfg.out_dir)
    with folder.lock() as lock_fd:
        folder.write_config(cfg)  # the ServerApp writes it too (also under `flwr run`)
        (folder.path / "summary.json").unlink(missing_ok=True)
        app_dir = folder.path / ".flwr-app"
        write_app(app_dir, cfg)
        log_path = folder.path / "flower.log"
        with RoundProgress(folder, cfg.rounds, enabled=progress) as bar:
            code = submit(app_dir, cfg, log_path, bar.update, lock_fd, stop)
        if not (folder.path / "summary.json").is_file():
            raise RunFailed(failure_message(code, log_path))
    if track:
        track_run(folder.path, cfg.tracking, cfg.tracking.experiment or cfg.name)
    return folder
